"""Routing policies: one file each behind `router.policies.base.Policy`."""
