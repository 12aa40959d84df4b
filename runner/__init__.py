"""recon runner: applies the person-property diff computed by the dbt models."""

__version__ = "0.1.0"
