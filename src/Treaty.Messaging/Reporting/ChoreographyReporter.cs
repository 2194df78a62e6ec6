using System.Text.Json;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Treaty.AspNetCore.Data;
using Treaty.Client;
using Treaty.Core.Contracts;

namespace Treaty.Messaging;

/// <summary>What one pass of the reporter did.</summary>
/// <param name="Read">Due report rows read.</param>
/// <param name="Reported">Rows the coordinator answered for good (recorded, duplicate, ignored or refused), now marked.</param>
/// <param name="Failed">Rows that could not be reported now; each waits for its own backoff.</param>
/// <param name="Released">Earlier rows that were backing off and are due again at once, the coordinator having answered.</param>
internal readonly record struct ReportPass(int Read, int Reported, int Failed, int Released = 0);

/// <summary>
/// Sends the committed report rows to the coordinator (<c>POST /api/v1/choreography/events</c>)
/// and marks them only after it answered: a crash in between reports them again, which the
/// coordinator ignores (it dedupes by message id). While the coordinator cannot be reached, each row
/// backs off on its own. It runs beside the outbox relay, never in its way: the events travel
/// whether or not the coordinator hears of them.
/// </summary>
/// <param name="database">The service's database, where the report rows are.</param>
/// <param name="coordinator">The way to the coordinator (<see cref="TreatyClient"/> in a host; the
/// deterministic simulation routes it into its own engine); disposed with the reporter.</param>
/// <param name="options">Batch size and backoff.</param>
/// <param name="time">The clock of the backoff and the polls.</param>
/// <param name="logger">Where failures are logged.</param>
/// <param name="random01">The jitter's random source (tests pin it).</param>
internal sealed class ChoreographyReporter(
    ParticipantDatabase database,
    IReportChannel coordinator,
    ChoreographyReportingOptions options,
    TimeProvider time,
    ILogger<ChoreographyReporter> logger,
    Func<double>? random01 = null) : BackgroundService
{
    private const string Refused = "refused";
    private readonly IReportChannel _client = coordinator;
    private readonly Func<double> _random01 = random01 ?? Random.Shared.NextDouble;
    private readonly WakeSignal _wake = new();

    public void Nudge() => _wake.Set();

    /// <summary>
    /// Reports the due rows (one batch). The coordinator validates a whole request before it records
    /// any of it, so a batch it refuses (400, 409 for a gid of another protocol, 413 too large) goes
    /// again one event at a time: the one it will never take is marked refused and stops coming back,
    /// the others are recorded. Database errors throw.
    /// </summary>
    public async Task<ReportPass> ReportOnceAsync(CancellationToken cancellationToken)
    {
        var batch = await ReadDueAsync(cancellationToken);
        if (batch.Count == 0)
        {
            return new ReportPass(0, 0, 0);
        }

        Exception? failure;
        try
        {
            var answer = await _client.ReportEventsAsync(batch.ConvertAll(row => row.Request), cancellationToken);
            var results = answer.Events.GroupBy(e => e.MessageId, StringComparer.Ordinal).ToDictionary(g => g.Key, g => g.First().Result, StringComparer.Ordinal);
            await MarkAsync(batch.ConvertAll(row => (row, results.GetValueOrDefault(row.Request.MessageId, "recorded"), (string?)null)), cancellationToken);
            return new ReportPass(batch.Count, batch.Count, 0, await ReleaseBackedOffAsync(cancellationToken));
        }
        catch (TreatyApiException refused) when (refused.StatusCode is 400 or 409 or 413)
        {
            return await ReportEachAsync(batch, cancellationToken);
        }
        catch (Exception exception) when (IsUnreachable(exception, cancellationToken))
        {
            failure = exception;
        }

        foreach (var row in batch)
        {
            await RecordFailureAsync(row, failure.Message, cancellationToken);
        }

        // One line per transaction, in its gid's scope: a query on a gid finds its unreported events.
        foreach (var events in batch.GroupBy(row => row.Request.CorrelationId, StringComparer.Ordinal))
        {
            using var scope = logger.BeginCorrelationScope(events.Key);
            ReportingLog.ReportFailed(logger, events.Count(), events.Key, failure.Message);
        }

        return new ReportPass(batch.Count, 0, batch.Count);
    }

    /// <summary>How long until the earliest backed-off row is due (null: none is waiting).</summary>
    public async Task<TimeSpan?> UntilNextDueAsync(CancellationToken cancellationToken)
    {
        await using var transaction = await database.BeginAsync(cancellationToken);
        await using var select = transaction.CreateCommand(ReportSql.NextDue);
        DateTimeOffset? next = null;
        await using (var reader = await select.ExecuteReaderAsync(cancellationToken))
        {
            if (await reader.ReadAsync(cancellationToken))
            {
                next = MessagingSql.ReadNullableTime(reader, 0);
            }
        }

        await transaction.CommitAsync(cancellationToken);
        return next is { } due ? (due - time.GetUtcNow() is var left && left > TimeSpan.Zero ? left : TimeSpan.Zero) : null;
    }

    protected override Task ExecuteAsync(CancellationToken stoppingToken) => RunAsync(stoppingToken);

    /// <summary>
    /// The reporter's loop. <see cref="ExecuteAsync"/> is all it is in a host; the deterministic
    /// simulation calls it directly, inside a simulated process (as it does the relay's).
    /// </summary>
    internal Task RunAsync(CancellationToken stoppingToken) => PollingLoop.RunAsync(
        async ct =>
        {
            var pass = await ReportOnceAsync(ct);
            if ((pass.Read == options.BatchSize && pass.Reported > 0) || pass.Released > 0)
            {
                return null; // more may be waiting, or rows that waited for the coordinator are due now
            }

            var untilDue = await UntilNextDueAsync(ct);
            return untilDue is { } due && due < options.PollInterval ? due : options.PollInterval;
        },
        failures => options.Backoff(failures, _random01()),
        (exception, failures, wait) => ReportingLog.LoopFailed(logger, exception, failures, wait),
        _wake, time, stoppingToken);

    public override void Dispose()
    {
        base.Dispose();
        _client.Dispose();
    }

    // Connection refused, a timeout, a 5xx or any other answer that is not about the events
    // themselves (401 with a wrong key, say): the report waits and goes again.
    private static bool IsUnreachable(Exception exception, CancellationToken cancellationToken) =>
        exception is HttpRequestException or TreatyApiException or JsonException or TimeoutException
        || (exception is OperationCanceledException && !cancellationToken.IsCancellationRequested);

    private async Task<ReportPass> ReportEachAsync(List<ReportRow> batch, CancellationToken cancellationToken)
    {
        var reported = 0;
        foreach (var row in batch)
        {
            using var scope = logger.BeginCorrelationScope(row.Request.CorrelationId);
            string? result = null;
            string? error = null;
            try
            {
                result = (await _client.ReportEventsAsync([row.Request], cancellationToken)).Events.FirstOrDefault()?.Result ?? "recorded";
            }
            catch (Exception exception) when (IsUnreachable(exception, cancellationToken))
            {
                error = exception.Message;
                if (exception is TreatyApiException { StatusCode: 400 or 409 or 413 } refused
                    && (refused.StatusCode != 409 || await IsOtherProtocolAsync(row, cancellationToken)))
                {
                    // Never accepted, however often it is sent: kept, marked, not sent again.
                    (result, error) = (Refused, refused.Detail ?? refused.Message);
                    ReportingLog.Rejected(logger, row.Request.Type, row.Request.CorrelationId, error);
                }

                // Otherwise 409 "busy" (report again), or the coordinator went away meanwhile: backs off.
            }

            if (result is null)
            {
                await RecordFailureAsync(row, error!, cancellationToken);
                continue;
            }

            await MarkAsync([(row, result, error)], cancellationToken);
            reported++;
        }

        return new ReportPass(batch.Count, reported, batch.Count - reported, reported > 0 ? await ReleaseBackedOffAsync(cancellationToken) : 0);
    }

    // The coordinator is back: what waited for it goes now, right behind the events that just got
    // through, rather than after each row's own backoff (up to MaxRetryDelay) ran out.
    private async Task<int> ReleaseBackedOffAsync(CancellationToken cancellationToken)
    {
        await using var transaction = await database.BeginAsync(cancellationToken);
        await using var update = transaction.CreateCommand(ReportSql.ReleaseBackedOff, ("now", MessagingSql.Time(database.Dialect, time.GetUtcNow())));
        var released = await update.ExecuteNonQueryAsync(cancellationToken);
        await transaction.CommitAsync(cancellationToken);
        return released;
    }

    // 409 means the gid is another protocol's transaction (for good) or is busy (report again).
    private async Task<bool> IsOtherProtocolAsync(ReportRow row, CancellationToken cancellationToken)
    {
        try
        {
            return await _client.ProtocolOfAsync(row.Request.CorrelationId, cancellationToken) is { } protocol && protocol != "choreography";
        }
        catch (Exception exception) when (IsUnreachable(exception, cancellationToken))
        {
            return false;
        }
    }

    private async Task<List<ReportRow>> ReadDueAsync(CancellationToken cancellationToken)
    {
        var rows = new List<ReportRow>();
        await using var transaction = await database.BeginAsync(cancellationToken);
        await using var select = transaction.CreateCommand(
            ReportSql.SelectDue,
            ("now", MessagingSql.Time(database.Dialect, time.GetUtcNow())),
            ("limit", options.BatchSize));
        await using (var reader = await select.ExecuteReaderAsync(cancellationToken))
        {
            while (await reader.ReadAsync(cancellationToken))
            {
                JsonElement? payload;
                try
                {
                    using var document = JsonDocument.Parse(reader.GetString(5));
                    payload = document.RootElement.Clone();
                }
                catch (JsonException)
                {
                    payload = null; // the outbox only holds JSON; a hand-edited row still reports its event
                }

                rows.Add(new ReportRow(
                    reader.GetInt64(0),
                    reader.GetInt32(9),
                    new ChoreographyEventRequest(reader.GetString(1), reader.GetString(2), reader.GetString(3), reader.GetString(4))
                    {
                        Payload = payload,
                        Outcome = reader.IsDBNull(6) ? null : reader.GetString(6),
                        TimeoutMs = reader.IsDBNull(7) ? null : reader.GetInt64(7),
                        At = MessagingSql.ReadTime(reader, 8),
                    }));
            }
        }

        await transaction.CommitAsync(cancellationToken);
        return rows;
    }

    private async Task MarkAsync(List<(ReportRow Row, string Result, string? Error)> rows, CancellationToken cancellationToken)
    {
        await using var transaction = await database.BeginAsync(cancellationToken);
        var now = MessagingSql.Time(database.Dialect, time.GetUtcNow());
        foreach (var (row, result, error) in rows)
        {
            await using var update = transaction.CreateCommand(ReportSql.MarkReported, ("now", now), ("result", result), ("error", error), ("seq", row.Seq));
            await update.ExecuteNonQueryAsync(cancellationToken);
        }

        await transaction.CommitAsync(cancellationToken);
    }

    private async Task RecordFailureAsync(ReportRow row, string error, CancellationToken cancellationToken)
    {
        var next = time.GetUtcNow() + options.Backoff(row.Attempts + 1, _random01());
        await using var transaction = await database.BeginAsync(cancellationToken);
        await using var update = transaction.CreateCommand(
            ReportSql.RecordFailure,
            ("error", error),
            ("next", MessagingSql.Time(database.Dialect, next)),
            ("seq", row.Seq));
        await update.ExecuteNonQueryAsync(cancellationToken);
        await transaction.CommitAsync(cancellationToken);
    }

    private sealed record ReportRow(long Seq, int Attempts, ChoreographyEventRequest Request);
}

/// <summary>
/// The reporter's way to the coordinator: <c>POST /api/v1/choreography/events</c> and the protocol
/// of a gid. It fails as <see cref="TreatyClient"/> does (<see cref="TreatyApiException"/> for an
/// error answer, <see cref="HttpRequestException"/>, a timeout), which the reporter sorts into
/// refused for good and try again.
/// </summary>
internal interface IReportChannel : IDisposable
{
    /// <summary>Reports <paramref name="events"/> in one request; the coordinator's answer.</summary>
    Task<ChoreographyReportView> ReportEventsAsync(IReadOnlyList<ChoreographyEventRequest> events, CancellationToken cancellationToken);

    /// <summary>The protocol of the transaction <paramref name="gid"/> (null: the coordinator does not know it).</summary>
    Task<string?> ProtocolOfAsync(string gid, CancellationToken cancellationToken);
}

/// <summary>The coordinator over HTTP, through <see cref="TreatyClient"/>; disposes the client and its <see cref="HttpClient"/>.</summary>
internal sealed class HttpReportChannel(HttpClient http, TimeProvider time) : IReportChannel
{
    private readonly TreatyClient _client = new(http, time);

    public Task<ChoreographyReportView> ReportEventsAsync(IReadOnlyList<ChoreographyEventRequest> events, CancellationToken cancellationToken) =>
        _client.ReportEventsAsync(events, cancellationToken);

    public async Task<string?> ProtocolOfAsync(string gid, CancellationToken cancellationToken) =>
        (await _client.GetAsync(gid, cancellationToken))?.Protocol;

    public void Dispose()
    {
        _client.Dispose();
        http.Dispose();
    }
}

/// <summary>Log messages of the choreography reporter (event ids 4530-4539 of Treaty.Messaging's 4501-4549).</summary>
internal static partial class ReportingLog
{
    [LoggerMessage(EventId = 4530, Level = LogLevel.Warning, Message = "Could not report {Count} choreography event(s) of {Gid} to the coordinator; each is tried again after its backoff (treaty_reports.last_error): {Detail}")]
    public static partial void ReportFailed(ILogger logger, int count, string gid, string detail);

    [LoggerMessage(EventId = 4531, Level = LogLevel.Warning, Message = "The coordinator refused the report of {Type} for {Gid} (not sent again): {Detail}")]
    public static partial void Rejected(ILogger logger, string type, string gid, string detail);

    [LoggerMessage(EventId = 4532, Level = LogLevel.Error, Message = "The reporter failed to read or update treaty_reports (failure {Failures} in a row); trying again in {Delay}")]
    public static partial void LoopFailed(ILogger logger, Exception exception, int failures, TimeSpan delay);
}
