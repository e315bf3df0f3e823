"""Test-wide settings.

torch's intra-op thread pool oversubscribes small CI machines when the test
process and a grading kernel run at once (one elbo_bpd call went from 0.5 s to
30 s on 2 shared cores); the tests' tensors are small, so one thread is fastest.
"""

import torch

torch.set_num_threads(1)
