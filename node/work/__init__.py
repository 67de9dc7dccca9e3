"""Work: claiming READY studies, leases, crash accounting, running inference and the result
writers, and finishing a study with its dispatch rows."""
