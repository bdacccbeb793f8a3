"""Alerts: one module per channel, each a pure ``payload``, and the dispatcher that sends them.

``message`` holds the :class:`Notification` every channel formats; ``webhook``, ``slack``,
``pagerduty`` and ``alertmanager`` turn it into each service's documented JSON; ``dispatcher``
sends apart from collection (a thread and a bounded queue per channel, timeouts, retries).
"""

from querywatch.alerts.alertmanager import AlertmanagerChannel
from querywatch.alerts.channel import Channel
from querywatch.alerts.dispatcher import (
    ChannelStatus,
    Dispatcher,
    OutboxSettings,
    channels_from_settings,
)
from querywatch.alerts.message import Notification
from querywatch.alerts.pagerduty import PagerDutyChannel
from querywatch.alerts.slack import SlackChannel
from querywatch.alerts.webhook import WebhookChannel

__all__ = [
    "AlertmanagerChannel",
    "Channel",
    "ChannelStatus",
    "Dispatcher",
    "Notification",
    "OutboxSettings",
    "PagerDutyChannel",
    "SlackChannel",
    "WebhookChannel",
    "channels_from_settings",
]
