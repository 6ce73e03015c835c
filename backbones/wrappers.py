"""Third-party backbones (timm, torchvision) behind the registry (placeholder: filled in by the heads work)."""
