using System.Text.Json;
using Treaty.Core.Engine;
using Treaty.Core.Model;

namespace Treaty.Core.Contracts;

/// <summary>The result of reading a report of choreography events: the events, or what is wrong (then nothing may be stored).</summary>
public sealed record ParsedEvents(IReadOnlyList<ChoreographyEvent> Events, IReadOnlyList<ValidationError> Errors)
{
    public bool IsValid => Errors.Count == 0;
}

/// <summary>One reported event as the API answers it.</summary>
/// <param name="MessageId">The event's id.</param>
/// <param name="Gid">The saga it belongs to.</param>
/// <param name="Result"><c>recorded</c>, <c>duplicate</c> (its id was recorded before), <c>ignored</c> (the saga
/// already holds the most events one may record, 1000) or <c>conflict</c> (the gid is another protocol's).</param>
/// <param name="Status">The saga's status after it.</param>
public sealed record ReportedEventView(string MessageId, string Gid, string Result, string? Status);

/// <summary>The answer to <c>POST /api/v1/choreography/events</c>, in the order of the request.</summary>
public sealed record ChoreographyReportView(IReadOnlyList<ReportedEventView> Events);

/// <summary>
/// Reads <c>POST /api/v1/choreography/events</c>: one event object, or <c>{ "events": [ ... ] }</c>.
/// Each event: <c>messageId</c>, <c>type</c>, <c>service</c>, <c>correlationId</c> (the gid),
/// optional <c>at</c>, <c>payload</c> (any JSON, clipped for the timeline), <c>outcome</c>
/// (<c>completed</c>, <c>compensated</c>, <c>failed</c>) and <c>timeoutMs</c>.
/// </summary>
public static class ChoreographyEventParser
{
    /// <summary>Events one request may carry.</summary>
    public const int MaxBatch = 100;

    /// <summary>Longest message id and event type.</summary>
    public const int MaxIdLength = 200;

    /// <summary>Reads <paramref name="root"/>; payloads are clipped to <paramref name="payloadBytes"/> UTF-8 bytes.</summary>
    public static ParsedEvents Parse(JsonElement root, int payloadBytes)
    {
        var errors = new List<ValidationError>();
        var events = new List<ChoreographyEvent>();
        if (root.ValueKind != JsonValueKind.Object)
        {
            errors.Add(new("$", "The body must be an event object or { \"events\": [ ... ] }."));
            return new(events, errors);
        }

        if (root.TryGetProperty("events", out var list))
        {
            if (list.ValueKind != JsonValueKind.Array || list.GetArrayLength() == 0)
            {
                errors.Add(new("events", "A non-empty array of events."));
            }
            else if (list.GetArrayLength() > MaxBatch)
            {
                errors.Add(new("events", $"At most {MaxBatch} events per request."));
            }
            else
            {
                var i = 0;
                foreach (var item in list.EnumerateArray())
                {
                    ParseOne(item, $"events[{i++}].", payloadBytes, events, errors);
                }
            }
        }
        else
        {
            ParseOne(root, "", payloadBytes, events, errors);
        }

        return new(events, errors);
    }

    private static void ParseOne(JsonElement item, string at, int payloadBytes, List<ChoreographyEvent> events, List<ValidationError> errors)
    {
        if (item.ValueKind != JsonValueKind.Object)
        {
            errors.Add(new(at.Length == 0 ? "$" : at.TrimEnd('.'), "An event is a JSON object."));
            return;
        }

        var before = errors.Count;
        var messageId = Text(item, "messageId", at, MaxIdLength, errors);
        var type = Text(item, "type", at, MaxIdLength, errors);
        var service = Text(item, "service", at, TreatyDefaults.MaxNameLength, errors);
        var gid = Text(item, "correlationId", at, TreatyDefaults.MaxGidLength, errors);
        if (gid is not null && !RequestParser.IsValidGid(gid))
        {
            errors.Add(new($"{at}correlationId", $"The saga's gid: 1 to {TreatyDefaults.MaxGidLength} characters of letters, digits, '-', '_', '.' and ':'."));
        }

        DateTimeOffset? reportedAt = null;
        if (Present(item, "at", out var atValue))
        {
            if (atValue.ValueKind == JsonValueKind.String && atValue.TryGetDateTimeOffset(out var parsed))
            {
                reportedAt = parsed;
            }
            else
            {
                errors.Add(new($"{at}at", "An ISO 8601 time, such as 2026-12-06T20:00:00Z."));
            }
        }

        ChoreographyOutcome? outcome = null;
        if (Present(item, "outcome", out var outcomeValue))
        {
            if (outcomeValue.ValueKind == JsonValueKind.String && ChoreographyOutcomes.TryParse(outcomeValue.GetString(), out var o))
            {
                outcome = o;
            }
            else
            {
                errors.Add(new($"{at}outcome", "One of completed, compensated, failed (or absent while the saga goes on)."));
            }
        }

        long? timeoutMs = null;
        if (Present(item, "timeoutMs", out var timeoutValue))
        {
            if (timeoutValue.ValueKind == JsonValueKind.Number && timeoutValue.TryGetInt64(out var ms) && ms is > 0 and <= TreatyDefaults.MaxTimeoutMs)
            {
                timeoutMs = ms;
            }
            else
            {
                errors.Add(new($"{at}timeoutMs", $"Milliseconds until the next event is expected: 1 to {TreatyDefaults.MaxTimeoutMs}."));
            }
        }

        string? payload = null;
        if (Present(item, "payload", out var payloadValue))
        {
            payload = BodyClip.Clip(payloadValue.GetRawText(), payloadBytes);
        }

        if (errors.Count == before)
        {
            events.Add(new(messageId!, type!, service!, gid!, reportedAt, payload, outcome, timeoutMs));
        }
    }

    private static bool Present(JsonElement item, string name, out JsonElement value) =>
        item.TryGetProperty(name, out value) && value.ValueKind != JsonValueKind.Null;

    private static string? Text(JsonElement item, string name, string at, int maxLength, List<ValidationError> errors)
    {
        if (!Present(item, name, out var value) || value.ValueKind != JsonValueKind.String || string.IsNullOrWhiteSpace(value.GetString()))
        {
            errors.Add(new($"{at}{name}", $"Required: a non-empty string of at most {maxLength} characters."));
            return null;
        }

        var text = value.GetString()!;
        if (text.Length > maxLength || text.Any(char.IsControl))
        {
            errors.Add(new($"{at}{name}", $"At most {maxLength} characters, none of them control characters."));
            return null;
        }

        return text;
    }
}

/// <summary>
/// One event of a choreographed saga as a service reports it (<c>POST /api/v1/choreography/events</c>).
/// </summary>
/// <param name="MessageId">The event's id (the outbox message id): reporting it twice is harmless.</param>
/// <param name="Type">What happened, such as <c>payment.reserved</c>.</param>
/// <param name="Service">The service that emitted it.</param>
/// <param name="CorrelationId">The saga's gid (the order id).</param>
public sealed record ChoreographyEventRequest(string MessageId, string Type, string Service, string CorrelationId)
{
    /// <summary>When the service emitted it (kept for the timeline; the coordinator's time is authoritative).</summary>
    public DateTimeOffset? At { get; init; }

    /// <summary>The event's payload (clipped for the timeline).</summary>
    public JsonElement? Payload { get; init; }

    /// <summary>Set on the event that ends the saga: <c>completed</c>, <c>compensated</c> or <c>failed</c>.</summary>
    public string? Outcome { get; init; }

    /// <summary>How long until the next event is expected; the saga is stuck without one.</summary>
    public long? TimeoutMs { get; init; }
}

/// <summary>A batch of reported events.</summary>
public sealed record ReportChoreographyEventsRequest(IReadOnlyList<ChoreographyEventRequest> Events);

/// <summary>One recorded event: what was reported, what the engine did, and the API's answer for it.</summary>
/// <param name="Event">The event as reported.</param>
/// <param name="Result">The engine's outcome and the saga after it.</param>
/// <param name="View">The answer's entry for it.</param>
public sealed record RecordedEvent(ChoreographyEvent Event, ReportResult Result, ReportedEventView View)
{
    /// <summary>Not recorded because the gid is another protocol's transaction, or busy: the API answers 409 for it.</summary>
    public bool IsConflict => Result.Status is ReportStatus.OtherProtocol or ReportStatus.Busy;
}

/// <summary>
/// Records reported events in the engine, one after the other in the request's order, and words each
/// result as <c>POST /api/v1/choreography/events</c> answers it (the server's endpoint and the
/// simulation's report channel both go through here).
/// </summary>
public static class ChoreographyReports
{
    public static async Task<IReadOnlyList<RecordedEvent>> RecordAsync(TransactionEngine engine, IReadOnlyList<ChoreographyEvent> events, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(engine);
        ArgumentNullException.ThrowIfNull(events);
        var recorded = new List<RecordedEvent>(events.Count);
        foreach (var reported in events)
        {
            var result = await engine.ReportEventAsync(reported, cancellationToken);
            recorded.Add(new(reported, result, new(reported.MessageId, reported.CorrelationId, ResultWord(result.Status), result.State?.Status.ToWire())));
        }

        return recorded;
    }

    /// <summary>The answer's word for a result: recorded, duplicate, conflict, ignored or busy.</summary>
    public static string ResultWord(ReportStatus status) => status switch
    {
        ReportStatus.Recorded => "recorded",
        ReportStatus.Duplicate => "duplicate",
        ReportStatus.OtherProtocol => "conflict",
        ReportStatus.Full => "ignored",
        _ => "busy",
    };
}
