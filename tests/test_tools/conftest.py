import os.path as osp
import sys

# Helper modules of this folder (tiny_demo.py) import by name, as in the other test folders.
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
