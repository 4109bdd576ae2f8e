"""The data layer: converters, TFRecord I/O, tf.data pipelines, the demo dataset, and the
helpers every script shares (atomic_write, script_hygiene).

Imported as `auto_deeplab_datasets` (setup.cfg maps this folder to that name; in a checkout
the file auto_deeplab_datasets.py does the same), never as `datasets`, which is Hugging Face's
package. Inside the folder, imports are relative (`from . import registry`), so the converter
scripts also run from the checkout's root as `python -m datasets.build_..._tfrecord`.

The dependency runs one way: auto_deeplab_tf and train/ import this package; nothing here
imports auto_deeplab_tf or train (tests/packaging_test.py checks both rules).
"""
