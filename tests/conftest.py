import torch

# Tiny CPU ops run much faster on one thread than on two contended ones, and results stay
# identical between a test process and the subprocesses it starts (OMP_NUM_THREADS=1 there).
torch.set_num_threads(1)
