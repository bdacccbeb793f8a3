"""Alerts: one module per channel, each a pure ``payload``, and the dispatcher that sends them.

``message`` holds the :class:`Notification` every channel formats; ``webhook``, ``slack``,
``pagerduty`` and ``alertmanager`` turn it into each service's documented JSON; ``dispatcher``
sends apart from collection (a thread and a bounded queue per channel, timeouts, retries).
"""

from typing import TYPE_CHECKING

from querywatch.lazy import exports

if TYPE_CHECKING:
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

# name -> its module, imported on first use: the CLI reads pagerduty.EVENTS_URL for a default
# without loading the dispatcher (httpx)
_LAZY = {
    "AlertmanagerChannel": "alertmanager",
    "Channel": "channel",
    "ChannelStatus": "dispatcher",
    "Dispatcher": "dispatcher",
    "Notification": "message",
    "OutboxSettings": "dispatcher",
    "PagerDutyChannel": "pagerduty",
    "SlackChannel": "slack",
    "WebhookChannel": "webhook",
    "channels_from_settings": "dispatcher",
}


__getattr__ = exports(__name__, _LAZY)
