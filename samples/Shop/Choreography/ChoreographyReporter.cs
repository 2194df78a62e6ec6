using System.Text.Json;
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

        await client.ReportEventsAsync(events, ct);
        await database.WriteAsync(async participant =>
        {
            var (connection, transaction) = ShopTransaction.Of(participant);
            foreach (var e in events)
            {
                await Sql.ExecuteAsync(connection, transaction, "UPDATE shop_event_reports SET reported = 1 WHERE message_id = $id", ct, ("$id", e.MessageId));
            }

            return events.Count;
        }, ct);
        return events.Count;
    }

    [LoggerMessage(EventId = 40, Level = LogLevel.Warning, Message = "Could not report choreography events to the coordinator (retried): {Detail}")]
    private partial void LogFailed(string detail);
}
