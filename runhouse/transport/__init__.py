"""How clients reach daemons: the HTTP client (client.py) and SSH (ssh.py: commands, host groups, tunnels, rsync)."""
