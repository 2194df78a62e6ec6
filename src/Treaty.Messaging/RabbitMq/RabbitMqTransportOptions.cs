namespace Treaty.Messaging.RabbitMq;

/// <summary>Configures <see cref="RabbitMqTransport"/>. Defaults come from <see cref="RabbitMqDefaults"/>.</summary>
public sealed class RabbitMqTransportOptions
{
    /// <summary>The broker, e.g. <c>amqp://guest:guest@127.0.0.1:5672/</c>. Required.</summary>
    public Uri? Uri { get; set; }

    /// <summary>The topic exchange events are published to; the routing key is the message type.</summary>
    public string ExchangeName { get; set; } = RabbitMqDefaults.ExchangeName;

    /// <summary>How many unacknowledged deliveries one subscriber holds at a time (basic.qos).</summary>
    public ushort PrefetchCount { get; set; } = RabbitMqDefaults.PrefetchCount;

    /// <summary>How long a delivery that asked for a retry waits in the retry queue before it is delivered again.</summary>
    public TimeSpan RetryDelay { get; set; } = RabbitMqDefaults.RetryDelay;

    /// <summary>
    /// After this many deliveries that ended in a retry or an exception, the transport stops retrying and moves the
    /// message to the subscriber's dead-letter queue. A safety net: the kit counts attempts in the consumer's
    /// database and normally dead-letters first.
    /// </summary>
    public int MaxDeliveryAttempts { get; set; } = RabbitMqDefaults.MaxDeliveryAttempts;

    /// <summary>How long <see cref="RabbitMqTransport.SendAsync"/> waits for the broker's confirms before it throws.</summary>
    public TimeSpan ConfirmTimeout { get; set; } = RabbitMqDefaults.ConfirmTimeout;

    /// <summary>How long the client waits between attempts to reconnect after the connection was lost.</summary>
    public TimeSpan NetworkRecoveryInterval { get; set; } = RabbitMqDefaults.NetworkRecoveryInterval;

    /// <summary>The connection's name as the broker shows it.</summary>
    public string ConnectionName { get; set; } = RabbitMqDefaults.ConnectionName;

    /// <summary>Clock for the confirm timeout.</summary>
    public TimeProvider TimeProvider { get; set; } = TimeProvider.System;

    /// <summary>Where the transport logs; nothing is logged when it is null.</summary>
    public Microsoft.Extensions.Logging.ILoggerFactory? LoggerFactory { get; set; }

    /// <summary>Throws when a value cannot work, naming it.</summary>
    public void Validate()
    {
        if (Uri is null)
            throw new ArgumentException("RabbitMqTransportOptions.Uri is required (amqp://user:password@host:port/vhost).", nameof(Uri));
        if (Uri.Scheme is not ("amqp" or "amqps"))
            throw new ArgumentException($"RabbitMqTransportOptions.Uri must be amqp:// or amqps://, not {Uri.Scheme}://.", nameof(Uri));
        if (string.IsNullOrWhiteSpace(ExchangeName))
            throw new ArgumentException("RabbitMqTransportOptions.ExchangeName must not be empty.", nameof(ExchangeName));
        if (PrefetchCount == 0)
            throw new ArgumentException("RabbitMqTransportOptions.PrefetchCount must be at least 1 (0 would mean unlimited).", nameof(PrefetchCount));
        if (RetryDelay <= TimeSpan.Zero || RetryDelay.TotalMilliseconds > int.MaxValue)
            throw new ArgumentException("RabbitMqTransportOptions.RetryDelay must be positive.", nameof(RetryDelay));
        if (MaxDeliveryAttempts < 1)
            throw new ArgumentException("RabbitMqTransportOptions.MaxDeliveryAttempts must be at least 1.", nameof(MaxDeliveryAttempts));
        if (ConfirmTimeout <= TimeSpan.Zero)
            throw new ArgumentException("RabbitMqTransportOptions.ConfirmTimeout must be positive.", nameof(ConfirmTimeout));
        if (NetworkRecoveryInterval <= TimeSpan.Zero)
            throw new ArgumentException("RabbitMqTransportOptions.NetworkRecoveryInterval must be positive.", nameof(NetworkRecoveryInterval));
    }
}

/// <summary>The defaults of <see cref="RabbitMqTransportOptions"/>.</summary>
public static class RabbitMqDefaults
{
    /// <summary>The events exchange.</summary>
    public const string ExchangeName = "treaty.events";

    /// <summary>Unacknowledged deliveries per subscriber.</summary>
    public const ushort PrefetchCount = 32;

    /// <summary>Retries after a retry or an exception before the transport dead-letters a message.</summary>
    public const int MaxDeliveryAttempts = 20;

    /// <summary>The connection's name.</summary>
    public const string ConnectionName = "treaty";

    /// <summary>Wait in the retry queue.</summary>
    public static readonly TimeSpan RetryDelay = TimeSpan.FromSeconds(5);

    /// <summary>Wait for publisher confirms.</summary>
    public static readonly TimeSpan ConfirmTimeout = TimeSpan.FromSeconds(30);

    /// <summary>How long disposing a transport or a subscription waits for the broker in all; the rest finishes in the background.</summary>
    public static readonly TimeSpan ShutdownTimeout = TimeSpan.FromSeconds(3);

    /// <summary>Wait between reconnection attempts.</summary>
    public static readonly TimeSpan NetworkRecoveryInterval = TimeSpan.FromSeconds(2);
}
