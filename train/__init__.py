"""The command-line scripts (`python -m train.<name>`, or the `auto-deeplab-*` commands).

Every script imports this package first, so TensorFlow is imported here, once, without its
C++ start-up lines (script_hygiene.import_tensorflow_quietly).
"""

from auto_deeplab_datasets import script_hygiene

script_hygiene.import_tensorflow_quietly()
