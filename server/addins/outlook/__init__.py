"""The Outlook add-in: its task-pane API, the hosted pages' headers and Microsoft token checks."""
