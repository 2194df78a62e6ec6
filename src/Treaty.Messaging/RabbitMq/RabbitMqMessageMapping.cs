using System.Globalization;
using System.Text;
using RabbitMQ.Client;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging.RabbitMq;

/// <summary>
/// A <see cref="TransportMessage"/> in AMQP: the ids and the type in the standard properties (so the management UI
/// and other clients see them), and again in headers with the trace context, the source and the exact creation time
/// (the AMQP timestamp has only seconds).
/// </summary>
internal static class RabbitMqMessageMapping
{
    public const string MessageIdHeader = "treaty-message-id";
    public const string TypeHeader = "treaty-type";
    public const string CorrelationIdHeader = "treaty-correlation-id";
    public const string SourceHeader = "treaty-source";
    public const string CreatedAtHeader = "treaty-created-at";
    public const string TraceParentHeader = "traceparent";
    public const string DeadLetterReasonHeader = "treaty-dead-letter-reason";

    public static BasicProperties ToProperties(TransportMessage message)
    {
        var headers = new Dictionary<string, object?>
        {
            [MessageIdHeader] = message.MessageId,
            [TypeHeader] = message.Type,
            [CorrelationIdHeader] = message.CorrelationId,
            [SourceHeader] = message.Source,
            [CreatedAtHeader] = message.CreatedAt.ToString("O", CultureInfo.InvariantCulture),
        };
        if (message.TraceParent is not null)
            headers[TraceParentHeader] = message.TraceParent;

        return new BasicProperties
        {
            Persistent = true,
            MessageId = message.MessageId,
            CorrelationId = message.CorrelationId,
            Type = message.Type,
            AppId = message.Source,
            ContentType = "application/json",
            Timestamp = new AmqpTimestamp(message.CreatedAt.ToUnixTimeSeconds()),
            Headers = headers,
        };
    }

    /// <summary>Copies the delivery's properties for a republish (to the dead-letter queue), adding the reason.</summary>
    public static BasicProperties CopyForDeadLetter(IReadOnlyBasicProperties source, string reason)
    {
        var headers = source.Headers is null ? new Dictionary<string, object?>() : new Dictionary<string, object?>(source.Headers);
        headers[DeadLetterReasonHeader] = reason;
        return new BasicProperties(source) { Persistent = true, Headers = headers };
    }

    /// <summary>Reads a delivery back; null when it lacks what every Treaty message has (its id and type).</summary>
    public static TransportMessage? FromDelivery(IReadOnlyBasicProperties properties, string routingKey, ReadOnlyMemory<byte> body)
    {
        var headers = properties.Headers;
        var messageId = properties.MessageId ?? Header(headers, MessageIdHeader);
        var type = properties.Type ?? Header(headers, TypeHeader) ?? (routingKey.Length > 0 ? routingKey : null);
        if (string.IsNullOrEmpty(messageId) || string.IsNullOrEmpty(type))
            return null;

        var correlationId = properties.CorrelationId ?? Header(headers, CorrelationIdHeader) ?? "";
        var source = properties.AppId ?? Header(headers, SourceHeader) ?? "";
        var createdAt = DateTimeOffset.TryParse(Header(headers, CreatedAtHeader), CultureInfo.InvariantCulture, DateTimeStyles.RoundtripKind, out var parsed)
            ? parsed
            : DateTimeOffset.FromUnixTimeSeconds(properties.Timestamp.UnixTime);
        // The body is only valid while the consumer callback runs: the handler may keep the message longer.
        return new TransportMessage(messageId, type, correlationId, body.ToArray(), Header(headers, TraceParentHeader), source, createdAt);
    }

    /// <summary>How many times the main queue <paramref name="queue"/> rejected this message (its x-death count).</summary>
    public static long RejectionCount(IReadOnlyBasicProperties properties, string queue)
    {
        if (properties.Headers is null || !properties.Headers.TryGetValue("x-death", out var value) || value is not IEnumerable<object> deaths)
            return 0;
        foreach (var death in deaths)
        {
            if (death is IDictionary<string, object?> entry
                && AsString(entry.TryGetValue("queue", out var q) ? q : null) == queue
                && AsString(entry.TryGetValue("reason", out var r) ? r : null) == "rejected"
                && entry.TryGetValue("count", out var count) && count is not null)
            {
                return Convert.ToInt64(count, CultureInfo.InvariantCulture);
            }
        }

        return 0;
    }

    private static string? Header(IDictionary<string, object?>? headers, string name) =>
        headers is not null && headers.TryGetValue(name, out var value) ? AsString(value) : null;

    // Header strings arrive as AMQP long strings: byte arrays of UTF-8.
    private static string? AsString(object? value) => value switch
    {
        null => null,
        byte[] bytes => Encoding.UTF8.GetString(bytes),
        string s => s,
        _ => Convert.ToString(value, CultureInfo.InvariantCulture),
    };
}
