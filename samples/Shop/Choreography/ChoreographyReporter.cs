using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Shop.Infrastructure;
using Treaty.Client;
using Treaty.Core.Contracts;

namespace Shop.Choreography;

/// <summary>
/// Tells the coordinator which choreography events this service published, so a choreographed
/// checkout shows its timeline there (<c>treaty tx show</c>). A report row is written in the same
/// transaction as the event (<see cref="ChoreographyPublisher"/>), so no committed event goes
/// unreported; this loop sends the unreported rows and marks them once the coordinator answered.
/// Reporting twice is harmless (the coordinator ignores a message id it has); the coordinator
/// being down only delays the timeline, never the checkout.
/// </summary>
internal sealed partial class ChoreographyReporter(ShopDatabase database, TreatyClient client, TimeProvider time, ILogger<ChoreographyReporter> logger) : BackgroundService
{
    public const string Schema = """
        CREATE TABLE IF NOT EXISTS shop_event_reports (
            message_id TEXT PRIMARY KEY,
            type TEXT NOT NULL,
            service TEXT NOT NULL,
            gid TEXT NOT NULL,
            payload TEXT NOT NULL,
            outcome TEXT,
            timeout_ms INTEGER,
            at TEXT NOT NULL,
            reported INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX IF NOT EXISTS shop_event_reports_unreported ON shop_event_reports (reported, at);
        """;

    private static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(100);
    private static readonly TimeSpan Backoff = TimeSpan.FromSeconds(1);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        while (!stoppingToken.IsCancellationRequested)
        {
            var delay = Poll;
            try
            {
                while (await ReportBatchAsync(stoppingToken) > 0)
                {
                }
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e) when (e is HttpRequestException or TreatyApiException or JsonException or TimeoutException or Microsoft.Data.Sqlite.SqliteException or OperationCanceledException)
            {
                LogFailed(e.Message);
                delay = Backoff;
            }

            try
            {
                await Task.Delay(delay, time, stoppingToken);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    private async Task<int> ReportBatchAsync(CancellationToken ct)
    {
        var events = await database.ReadAsync(async connection =>
        {
            await using var command = Sql.Command(connection, null,
                "SELECT message_id, type, service, gid, payload, outcome, timeout_ms, at FROM shop_event_reports WHERE reported = 0 ORDER BY at LIMIT 100");
            await using var reader = await command.ExecuteReaderAsync(ct);
            var list = new List<ChoreographyEventRequest>();
            while (await reader.ReadAsync(ct))
            {
                using var payload = JsonDocument.Parse(reader.GetString(4));
                list.Add(new ChoreographyEventRequest(reader.GetString(0), reader.GetString(1), reader.GetString(2), reader.GetString(3))
                {
                    Payload = payload.RootElement.Clone(),
                    Outcome = reader.IsDBNull(5) ? null : reader.GetString(5),
                    TimeoutMs = reader.IsDBNull(6) ? null : reader.GetInt64(6),
                    At = Sql.ParseTimestamp(reader.GetString(7)),
                });
            }

            return list;
        }, ct);
        if (events.Count == 0)
        {
            return 0;
        }

        // 1 = reported, 2 = refused by the coordinator for good (kept, never sent again); absent: try again later.
        var states = new Dictionary<string, int>(StringComparer.Ordinal);
        try
        {
            await client.ReportEventsAsync(events, ct);
            events.ForEach(e => states[e.MessageId] = 1);
        }
        catch (TreatyApiException e) when (e.StatusCode is StatusCodes.Status400BadRequest or StatusCodes.Status409Conflict)
        {
            // One event the coordinator will never take (invalid, or its gid is another protocol's
            // transaction) must not make the others be sent again forever: one at a time, to know which.
            foreach (var one in events)
            {
                states[one.MessageId] = await ReportOneAsync(one, ct);
            }
        }

        await database.WriteAsync(async participant =>
        {
            var (connection, transaction) = ShopTransaction.Of(participant);
            foreach (var (id, state) in states)
            {
                await Sql.ExecuteAsync(connection, transaction, "UPDATE shop_event_reports SET reported = $state WHERE message_id = $id", ct,
                    ("$id", id), ("$state", state));
            }

            return states.Count;
        }, ct);
        return states.Values.All(s => s != 0) ? events.Count : 0; // some left for later: wait before the next round
    }

    /// <summary>1 when recorded, 2 when refused for good, 0 when it should be tried again (a busy transaction).</summary>
    private async Task<int> ReportOneAsync(ChoreographyEventRequest one, CancellationToken ct)
    {
        try
        {
            await client.ReportEventsAsync([one], ct);
            return 1;
        }
        catch (TreatyApiException refused) when (refused.StatusCode == StatusCodes.Status400BadRequest)
        {
            LogRejected(one.Type, one.CorrelationId, refused.Message);
            return 2;
        }
        catch (TreatyApiException refused) when (refused.StatusCode == StatusCodes.Status409Conflict)
        {
            // 409 is also "busy, report again": refused for good only when the gid is another protocol's.
            if ((await client.GetAsync(one.CorrelationId, ct))?.Protocol is { } protocol && protocol != "choreography")
            {
                LogRejected(one.Type, one.CorrelationId, refused.Message);
                return 2;
            }

            return 0;
        }
    }

    [LoggerMessage(EventId = 41, Level = LogLevel.Warning, Message = "The coordinator refused the report of {Type} for {Gid} (not retried): {Detail}")]
    private partial void LogRejected(string type, string gid, string detail);

    [LoggerMessage(EventId = 40, Level = LogLevel.Warning, Message = "Could not report choreography events to the coordinator (retried): {Detail}")]
    private partial void LogFailed(string detail);
}
