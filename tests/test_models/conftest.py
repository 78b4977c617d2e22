import os.path as osp
import sys

# The test modules here share helpers (tiny RILS builders, written-out losses).
sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
