"""Running recon under an orchestrator (optional extras)."""
