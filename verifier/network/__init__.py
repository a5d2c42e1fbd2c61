from verifier.network.graph import Network

__all__ = ["Network"]
