namespace Treaty.Messaging.Transport;

/// <summary>
/// Carries messages from one service's outbox relay to the subscribers of their type, at least
/// once. Every transport passes the same compliance suite: the embedded one (loopback HTTP between
/// the services, the outbox and inbox in each service's own database, no server) and RabbitMQ.
/// </summary>
/// <remarks>
/// The transport only moves messages; the guarantees around them live in the kit, the same on
/// every transport: the outbox row is written in the publisher's own database transaction, the
/// inbox row in the consumer's, so a message redelivered after a crash is handled once; retries,
/// backoff and dead letters are counted in the consumer's database.
/// </remarks>
public interface IMessageTransport : IAsyncDisposable
{
    /// <summary>The transport's name in configuration and logs: <c>embedded</c>, <c>rabbitmq</c>.</summary>
    string Name { get; }

    /// <summary>
    /// Hands <paramref name="messages"/> over durably: when the task completes, the transport holds
    /// each one (the broker confirmed it, or every subscriber's inbox committed it). On any failure
    /// it throws and the relay keeps the outbox rows and sends them again, so a message may arrive
    /// twice but never be lost.
    /// </summary>
    Task SendAsync(IReadOnlyList<TransportMessage> messages, CancellationToken cancellationToken);

    /// <summary>
    /// Starts delivering the messages of <paramref name="subscription"/>'s types to
    /// <paramref name="handler"/>, each at least once. A delivery is acknowledged only after the
    /// handler returned <see cref="DeliveryOutcome.Handled"/> or <see cref="DeliveryOutcome.DeadLettered"/>;
    /// <see cref="DeliveryOutcome.Retry"/>, an exception or a crash leaves it to be delivered again.
    /// Dispose the result to stop.
    /// </summary>
    Task<IAsyncDisposable> SubscribeAsync(Subscription subscription, MessageHandler handler, CancellationToken cancellationToken);
}

/// <summary>One message as it travels.</summary>
/// <param name="MessageId">Unique per message (the outbox row's id); the inbox deduplicates on it.</param>
/// <param name="Type">What happened, e.g. <c>order.created</c>; subscribers choose by type.</param>
/// <param name="CorrelationId">The business transaction it belongs to (the order id): the saga's gid.</param>
/// <param name="Body">The payload, UTF-8 JSON.</param>
/// <param name="TraceParent">W3C trace context of the publishing span, if any.</param>
/// <param name="Source">The publishing service.</param>
/// <param name="CreatedAt">When the outbox row was written.</param>
public sealed record TransportMessage(
    string MessageId,
    string Type,
    string CorrelationId,
    ReadOnlyMemory<byte> Body,
    string? TraceParent,
    string Source,
    DateTimeOffset CreatedAt);

/// <summary>Who subscribes to what.</summary>
/// <param name="Subscriber">The consuming service (one queue, one inbox).</param>
/// <param name="Types">The message types it handles.</param>
public sealed record Subscription(string Subscriber, IReadOnlyList<string> Types);

/// <summary>What became of one delivery.</summary>
public enum DeliveryOutcome
{
    /// <summary>Handled (or found already handled in the inbox): acknowledge it.</summary>
    Handled,

    /// <summary>Not handled this time: deliver it again later.</summary>
    Retry,

    /// <summary>Given up on and kept in the consumer's dead letters: acknowledge it.</summary>
    DeadLettered,
}

/// <summary>Handles one delivery of <paramref name="message"/>.</summary>
/// <param name="message">The message.</param>
/// <param name="cancellationToken">Stops the handling (the consumer is stopping).</param>
public delegate Task<DeliveryOutcome> MessageHandler(TransportMessage message, CancellationToken cancellationToken);
