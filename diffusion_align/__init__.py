"""diffusion_align: aligning diffusion models with vision rewards (ReNO, D3PO/DDPO, DRAKES, ...).

The methods land issue by issue; they all score samples through :mod:`mmreward`.
"""
