using Microsoft.Extensions.Logging;

namespace Treaty.Messaging.RabbitMq;

/// <summary>The RabbitMQ transport's log lines; event ids 7501-7599 (docs/observability.md).</summary>
internal static partial class RabbitMqLog
{
    [LoggerMessage(7501, LogLevel.Information, "RabbitMQ subscriber {Subscriber} consumes {Queue} for {Types}")]
    public static partial void Subscribed(ILogger logger, string subscriber, string queue, string types);

    [LoggerMessage(7502, LogLevel.Warning, "RabbitMQ connection lost: {Reason}; the client reconnects")]
    public static partial void ConnectionLost(ILogger logger, string reason);

    [LoggerMessage(7503, LogLevel.Information, "RabbitMQ connection recovered")]
    public static partial void ConnectionRecovered(ILogger logger);

    [LoggerMessage(7504, LogLevel.Warning, "RabbitMQ did not confirm {Count} message(s) within {Timeout}")]
    public static partial void ConfirmTimedOut(ILogger logger, int count, TimeSpan timeout);

    [LoggerMessage(7505, LogLevel.Warning, "RabbitMQ refused a published message")]
    public static partial void PublishNacked(ILogger logger, Exception exception);

    [LoggerMessage(7506, LogLevel.Warning, "RabbitMQ subscriber {Subscriber}: handler failed on {MessageId} ({Type}); it is retried")]
    public static partial void HandlerFailed(ILogger logger, Exception exception, string subscriber, string messageId, string type);

    [LoggerMessage(7507, LogLevel.Error, "RabbitMQ subscriber {Subscriber}: {MessageId} still failing after {Attempts} attempts; moved to the dead-letter queue")]
    public static partial void GaveUp(ILogger logger, string subscriber, string messageId, long attempts);

    [LoggerMessage(7508, LogLevel.Error, "RabbitMQ queue {Queue}: delivery {DeliveryTag} has no message id or type; moved to the dead-letter queue")]
    public static partial void Malformed(ILogger logger, string queue, ulong deliveryTag);

    [LoggerMessage(7509, LogLevel.Warning, "RabbitMQ queue {Queue}: could not move a delivery to the dead-letter queue; it is retried")]
    public static partial void DeadLetterFailed(ILogger logger, Exception exception, string queue);

    [LoggerMessage(7510, LogLevel.Information, "RabbitMQ subscriber {Subscriber}: could not settle {MessageId} ({Reason}); the broker redelivers it")]
    public static partial void SettleFailed(ILogger logger, string subscriber, string messageId, string reason);

    [LoggerMessage(7511, LogLevel.Warning, "RabbitMQ publish channel closed by the broker: {Reason}; opening a new one")]
    public static partial void PublishChannelClosed(ILogger logger, string reason);
}
