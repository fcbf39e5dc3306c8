"""Submitting stages as jobs: profiles -> executor parameters, the login-node launcher, the job side."""
