"""Emulators of four ad cabinets' customer-audience APIs on one loopback server (``lifecycle sandbox ads``).

Yandex Audience under ``/yandex``, VK Ads under ``/vk``, Google Data Manager under ``/google`` and Meta
Marketing API under ``/meta``; control routes under ``/_sandbox``. See README.md and
shared/research/ad_audiences.md for the behaviour and its sources.
"""

from sandbox.ads.testing import AdsHandle, running_ads

__all__ = ["AdsHandle", "running_ads"]
