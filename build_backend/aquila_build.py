"""aquila's build backend: setuptools' own, plus ``aquila-lm-eval.pth`` at the root of each wheel.

That one-line file (``import _aquila_lm_eval_hook``) is what makes plain
``lm_eval --model aquila`` work from the shell; see ``src/_aquila_lm_eval_hook.py``. A ``.pth``
file is run only from site-packages itself, so it has to be at the root of the wheel. setuptools
can put it there for ``pip install .`` (a ``build_py`` that copies it into ``build_lib``), but not
for ``pip install -e .``: the PEP 660 editable wheel holds only setuptools' own path file and
metadata. So this backend adds the file to the finished wheel, regular or editable, and a line
for it to the wheel's RECORD. Everything else is ``setuptools.build_meta``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403  (every other hook is setuptools')

PTH_NAME = "aquila-lm-eval.pth"
PTH_TEXT = b"import _aquila_lm_eval_hook\n"


def _add_pth(wheel_directory: str, wheel_name: str) -> str:
    path = os.path.join(wheel_directory, wheel_name)
    digest = base64.urlsafe_b64encode(hashlib.sha256(PTH_TEXT).digest()).rstrip(b"=").decode()
    with zipfile.ZipFile(path) as old, zipfile.ZipFile(path + ".tmp", "w") as new:
        entries = old.infolist()
        (record,) = [e for e in entries if e.filename.endswith(".dist-info/RECORD")]
        # Same timestamp as the rest of the wheel; before the .dist-info entries, RECORD last.
        pth = zipfile.ZipInfo(PTH_NAME, date_time=record.date_time)
        pth.compress_type, pth.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
        new.writestr(pth, PTH_TEXT)
        for e in entries:
            if e is not record:
                new.writestr(e, old.read(e))
        line = f"{PTH_NAME},sha256={digest},{len(PTH_TEXT)}\n".encode()
        new.writestr(record, line + old.read(record))
    os.replace(path + ".tmp", path)
    return wheel_name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    return _add_pth(wheel_directory, name)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)
    return _add_pth(wheel_directory, name)
