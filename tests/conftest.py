"""Test-wide settings: one torch thread.

Tests use tiny tensors, where a second thread only adds synchronisation; on a shared 2-core CI
machine two threads per process made the model tests 5-10x slower. Tests that need the repo's
test helpers (wm_helpers, ae_helpers) import them from this folder.
"""

import os
import sys

import torch

torch.set_num_threads(1)
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
sys.path.insert(0, os.path.dirname(__file__))
