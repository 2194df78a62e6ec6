using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
using Treaty.AspNetCore.Data;

namespace Treaty.Messaging;

/// <summary>
/// Publishes events through the transactional outbox: the row is written in the caller's own
/// local transaction, so it commits (and is later relayed) exactly when the caller's state change
/// commits. Nothing is sent until then. When the service reports to the coordinator
/// (<see cref="ReportingBuilderExtensions.ReportTo"/>), the event's report row is written in that
/// same transaction too.
/// </summary>
public sealed class Outbox
{
    private readonly string _source;
    private readonly TimeProvider _time;
    private readonly Action _nudge;
    private readonly Func<DateTimeOffset, Guid> _newMessageId;
    private readonly ReportWriter? _reports;

    /// <param name="source">This service's name, the source of what it publishes.</param>
    /// <param name="time">The clock of the rows' creation times.</param>
    /// <param name="nudge">Wakes the relay after a commit that published.</param>
    /// <param name="newMessageId">
    /// The message id for a publication at a time; null: <see cref="Guid.CreateVersion7(DateTimeOffset)"/>.
    /// The deterministic simulation passes seeded ids, so a run is a function of its seed.
    /// </param>
    /// <param name="reports">With <c>ReportTo</c>: writes each event's report row in the same transaction; null: no reports.</param>
    internal Outbox(string source, TimeProvider time, Action nudge, Func<DateTimeOffset, Guid>? newMessageId = null, ReportWriter? reports = null)
    {
        _source = source;
        _time = time;
        _nudge = nudge;
        _newMessageId = newMessageId ?? Guid.CreateVersion7;
        _reports = reports;
    }

    /// <summary>Writes an event of <paramref name="type"/> with a JSON <paramref name="payload"/> in <paramref name="transaction"/>; returns its message id.</summary>
    public Task<string> PublishAsync(ParticipantTransaction transaction, string type, string correlationId, JsonElement payload, CancellationToken cancellationToken) =>
        PublishRawAsync(transaction, type, correlationId, payload.GetRawText(), null, cancellationToken);

    /// <summary>
    /// Writes an event of <paramref name="type"/> with a JSON <paramref name="payload"/> in <paramref name="transaction"/>,
    /// reported to the coordinator as <paramref name="options"/> say (its outcome, the next event's timeout); returns its message id.
    /// </summary>
    public Task<string> PublishAsync(ParticipantTransaction transaction, string type, string correlationId, JsonElement payload, PublishOptions options, CancellationToken cancellationToken) =>
        PublishRawAsync(transaction, type, correlationId, payload.GetRawText(), options ?? throw new ArgumentNullException(nameof(options)), cancellationToken);

    /// <summary>Writes an event whose payload <paramref name="jsonTypeInfo"/> serializes (a source-generated context); returns its message id.</summary>
    public Task<string> PublishAsync<T>(ParticipantTransaction transaction, string type, string correlationId, T payload, JsonTypeInfo<T> jsonTypeInfo, CancellationToken cancellationToken) =>
        PublishRawAsync(transaction, type, correlationId, JsonSerializer.Serialize(payload, jsonTypeInfo), null, cancellationToken);

    /// <summary>
    /// Writes an event whose payload <paramref name="jsonTypeInfo"/> serializes, reported to the coordinator
    /// as <paramref name="options"/> say (its outcome, the next event's timeout); returns its message id.
    /// </summary>
    public Task<string> PublishAsync<T>(ParticipantTransaction transaction, string type, string correlationId, T payload, JsonTypeInfo<T> jsonTypeInfo, PublishOptions options, CancellationToken cancellationToken) =>
        PublishRawAsync(transaction, type, correlationId, JsonSerializer.Serialize(payload, jsonTypeInfo), options ?? throw new ArgumentNullException(nameof(options)), cancellationToken);

    private async Task<string> PublishRawAsync(ParticipantTransaction transaction, string type, string correlationId, string json, PublishOptions? options, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(transaction);
        ArgumentException.ThrowIfNullOrWhiteSpace(type);
        ArgumentException.ThrowIfNullOrWhiteSpace(correlationId);
        var now = _time.GetUtcNow();
        // Version 7: time-ordered, so ids sort roughly by publication and index well.
        var messageId = _newMessageId(now).ToString();
        await using var insert = transaction.CreateCommand(
            MessagingSql.InsertOutbox,
            ("message_id", messageId),
            ("type", type),
            ("correlation_id", correlationId),
            ("body", json),
            ("trace_parent", TreatyMessagingTelemetry.CurrentTraceParent()),
            ("source", _source),
            ("created_at", MessagingSql.Time(transaction.Dialect, now)));
        await insert.ExecuteNonQueryAsync(cancellationToken);
        if (_reports is not null)
        {
            await _reports.WriteAsync(transaction, messageId, type, correlationId, json, now, options, cancellationToken);
        }

        // Wake the relay when the row is visible to it: after the commit, not now (on PostgreSQL
        // it would look before the commit, find nothing and wait for the poll).
        transaction.AfterCommit(_nudge);
        return messageId;
    }
}
