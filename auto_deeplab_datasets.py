"""`auto_deeplab_datasets` in a checkout: the data layer in datasets/ under its import name.

Installed, the folder datasets/ is the package `auto_deeplab_datasets` (setup.cfg,
`package_dir`), so that the project never takes the name `datasets` from Hugging Face's
package (README, Installation). This file gives a checkout that is not installed (or
installed before the mapping existed) the same name: on import it loads datasets/__init__.py
as the package `auto_deeplab_datasets` with datasets/ as its path, so `import
auto_deeplab_datasets.registry` loads datasets/registry.py. It is not installed itself.
"""

import importlib.util
import os
import sys

_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "datasets")
_spec = importlib.util.spec_from_file_location(
    __name__, os.path.join(_FOLDER, "__init__.py"), submodule_search_locations=[_FOLDER])
_package = importlib.util.module_from_spec(_spec)
sys.modules[__name__] = _package  # the import statement returns this entry, not this file
_spec.loader.exec_module(_package)
