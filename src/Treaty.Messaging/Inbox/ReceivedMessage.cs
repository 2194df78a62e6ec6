using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Treaty.AspNetCore.Data;

namespace Treaty.Messaging;

/// <summary>
/// Handles one message inside <paramref name="transaction"/>, the consumer's local transaction in
/// which the inbox row is written: the handler's writes (and the follow-up events it publishes
/// through <see cref="Outbox"/>) commit together with it. Throw to fail the attempt: everything
/// rolls back and the message is retried, then dead-lettered.
/// </summary>
public delegate Task MessageConsumer(ParticipantTransaction transaction, ReceivedMessage message, CancellationToken cancellationToken);

/// <summary>A message as a consumer receives it.</summary>
/// <param name="MessageId">Unique per message; the inbox deduplicates on it.</param>
/// <param name="Type">The event type, e.g. <c>order.created</c>.</param>
/// <param name="CorrelationId">The business transaction (the saga's gid); pass it on to follow-up events.</param>
/// <param name="Body">The payload, UTF-8 JSON.</param>
/// <param name="TraceParent">The publisher's W3C trace context, if any.</param>
/// <param name="Source">The publishing service.</param>
/// <param name="CreatedAt">When it was published.</param>
/// <param name="Attempt">1 for the first handling; more after failed attempts.</param>
public sealed record ReceivedMessage(
    string MessageId,
    string Type,
    string CorrelationId,
    ReadOnlyMemory<byte> Body,
    string? TraceParent,
    string Source,
    DateTimeOffset CreatedAt,
    int Attempt)
{
    /// <summary>The payload as a JSON element.</summary>
    public JsonElement Json()
    {
        using var document = JsonDocument.Parse(Body);
        return document.RootElement.Clone();
    }

    /// <summary>The payload deserialized with a source-generated <paramref name="jsonTypeInfo"/>.</summary>
    public T? Read<T>(JsonTypeInfo<T> jsonTypeInfo) => JsonSerializer.Deserialize(Body.Span, jsonTypeInfo);
}
