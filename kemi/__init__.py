"""kemi-ha: Kamailio KEMI routing for an active-active SIP proxy + rtpengine cluster."""

__version__ = "0.1.0"
