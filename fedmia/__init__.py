"""fedmia: membership-inference audits of centralized and federated (Flower + Ray) training."""

__version__ = "0.1.0"
