"""archctl, the operator CLI."""
