using Treaty.AspNetCore.Data;

namespace Treaty.Messaging;

/// <summary>
/// Writes an event's report row in the publisher's transaction (so a committed event is always
/// reported, and a rolled-back one never is) and wakes the reporter once that transaction committed.
/// </summary>
internal sealed class ReportWriter(string service, ChoreographyReportingOptions options, Action nudge)
{
    public async Task WriteAsync(
        ParticipantTransaction transaction,
        string messageId,
        string type,
        string correlationId,
        string json,
        DateTimeOffset now,
        PublishOptions? publish,
        CancellationToken cancellationToken)
    {
        if (options.Resolve(type, publish) is not { } reported)
        {
            return;
        }

        await using var insert = transaction.CreateCommand(
            ReportSql.Insert,
            ("message_id", messageId),
            ("type", type),
            ("service", service),
            ("correlation_id", correlationId),
            ("payload", json),
            ("outcome", reported.Outcome),
            ("timeout_ms", reported.TimeoutMs),
            ("created_at", MessagingSql.Time(transaction.Dialect, now)));
        await insert.ExecuteNonQueryAsync(cancellationToken);
        transaction.AfterCommit(nudge);
    }
}
