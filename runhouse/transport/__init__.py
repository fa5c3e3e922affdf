"""How clients reach daemons: the HTTP client and the shared wire framing."""
