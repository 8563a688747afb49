import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
for sub in ("plugins/filter", "tests/lib", "tests/firmware", "firmware/app"):
    path = str(ROOT / sub)
    if path not in sys.path:
        sys.path.insert(0, path)
