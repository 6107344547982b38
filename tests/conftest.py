import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("WANDB_SILENT", "true")

import torch

# Tiny tensors on a shared 2-core machine: one intra-op thread avoids oversubscription stalls.
torch.set_num_threads(1)
