"""Add-ins: the Outlook add-in (task-pane API, token checks) and the manifests admins deploy.

``exporters`` is the registry of deployment files ``relay manifests export`` writes; each
add-in adds itself there.
"""
