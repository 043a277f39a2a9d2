"""kvfirewall: keeps Azure Key Vault firewalls open to exactly what Azure DevOps needs.

The package is the whole engine (settings, ranges, planner, ledger, Azure adapter, reconcile,
CLI). It never imports `azure.functions`: the Function App's triggers live in `functions/`.
"""
