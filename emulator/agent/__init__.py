"""What runs on a pnode: the omnibed agent and the modules it uses.

Everything in this package runs as root under the pnode's own python3 (MIN_PYTHON or newer)
with the standard library and pyroute2 only, and imports nothing of omnibed outside it:
bundle.py zips it whole, with pyroute2, into the file the pnode runs. server.py answers the
coordinator's requests; state.py is what the planner asks of a pnode; launcher.py is sent on
its own to install and check that file.
"""

MIN_PYTHON = (3, 9)  # the oldest python3 a pnode may have
