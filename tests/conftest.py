import os
import sys

# Tests import the helper modules next to them (hf_fixtures.py).
sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
