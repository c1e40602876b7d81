"""What the mesh looks like, for people: the live dashboard's data (:mod:`.view`) and its page
(``dashboard.html``, every asset inline, no CDN), served by the proxy admin at ``/dashboard``."""
