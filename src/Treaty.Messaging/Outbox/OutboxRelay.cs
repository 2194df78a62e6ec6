using System.Text;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Treaty.AspNetCore.Data;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging;

/// <summary>What one pass of the relay did.</summary>
/// <param name="Read">Due rows read.</param>
/// <param name="Sent">Rows the transport accepted and that are now marked sent.</param>
/// <param name="Failed">Rows the transport refused; each waits for its own backoff.</param>
internal readonly record struct RelayPass(int Read, int Sent, int Failed);

/// <summary>
/// Moves committed outbox rows to the transport, in publication order, and marks them sent only
/// after the transport accepted them: a crash in between sends them again (the consumers' inboxes
/// drop the copy). A row the transport refuses backs off on its own (<c>next_attempt_at</c>) so it
/// does not hold back the others. Woken by every commit that published, and by a poll for rows
/// written by other processes.
/// </summary>
internal sealed class OutboxRelay(
    ParticipantDatabase database,
    IMessageTransport transport,
    MessagingOptions options,
    TimeProvider time,
    ILogger<OutboxRelay> logger,
    Func<double>? random01 = null) : BackgroundService
{
    private readonly Func<double> _random01 = random01 ?? Random.Shared.NextDouble;

    private readonly WakeSignal _wake = new();

    public void Nudge() => _wake.Set();

    /// <summary>
    /// Sends the due rows (one batch) and marks the accepted ones sent. The batch goes to the
    /// transport whole; if that fails, row by row, so one message nobody can take now (a subscriber
    /// down, a handler answering Retry) is the only one that waits. Database errors throw.
    /// </summary>
    public async Task<RelayPass> RelayOnceAsync(CancellationToken cancellationToken)
    {
        var batch = await ReadDueAsync(cancellationToken);
        if (batch.Count == 0)
        {
            return new RelayPass(0, 0, 0);
        }

        var failure = await TrySendAsync(batch, cancellationToken);
        if (failure is null)
        {
            await MarkSentAsync(batch, cancellationToken);
            return new RelayPass(batch.Count, batch.Count, 0);
        }

        if (batch.Count == 1)
        {
            await RecordFailureAsync(batch[0], failure, cancellationToken);
            return new RelayPass(1, 0, 1);
        }

        // Rows before the failing one may have been delivered already; sending them again is
        // harmless (the inboxes drop copies), and simpler than trusting a partial answer.
        var sent = 0;
        foreach (var row in batch)
        {
            if (await TrySendAsync([row], cancellationToken) is { } error)
            {
                await RecordFailureAsync(row, error, cancellationToken);
                continue;
            }

            await MarkSentAsync([row], cancellationToken);
            sent++;
        }

        return new RelayPass(batch.Count, sent, batch.Count - sent);
    }

    /// <summary>How long until the earliest backed-off row is due (null: none is waiting).</summary>
    public async Task<TimeSpan?> UntilNextDueAsync(CancellationToken cancellationToken)
    {
        await using var transaction = await database.BeginAsync(cancellationToken);
        await using var select = transaction.CreateCommand(MessagingSql.NextDue);
        DateTimeOffset? next = null;
        await using (var reader = await select.ExecuteReaderAsync(cancellationToken))
        {
            if (await reader.ReadAsync(cancellationToken))
            {
                next = MessagingSql.ReadNullableTime(reader, 0);
            }
        }

        await transaction.CommitAsync(cancellationToken);
        return next is { } due ? Max(due - time.GetUtcNow(), TimeSpan.Zero) : null;
    }

    protected override Task ExecuteAsync(CancellationToken stoppingToken) => RunAsync(stoppingToken);

    /// <summary>
    /// The relay's loop. <see cref="ExecuteAsync"/> is all it is in a host; the deterministic
    /// simulation calls it directly, inside a simulated process (BackgroundService.StartAsync would
    /// hand it to the thread pool, out of the simulation's single-threaded scheduler).
    /// </summary>
    internal Task RunAsync(CancellationToken stoppingToken) => PollingLoop.RunAsync(
        async ct =>
        {
            var pass = await RelayOnceAsync(ct);
            if (pass.Read == options.RelayBatchSize && pass.Sent > 0)
            {
                return null; // more may be waiting
            }

            if (pass.Failed > 0)
            {
                MessagingLog.SendFailed(logger, transport.Name, pass.Failed, pass.Read);
            }

            var untilDue = await UntilNextDueAsync(ct);
            return untilDue is { } due && due < options.RelayPollInterval ? due : options.RelayPollInterval;
        },
        failures => options.RetryBackoff(failures, _random01()),
        (exception, failures, wait) => MessagingLog.RelayFailed(logger, exception, failures, wait),
        _wake, time, stoppingToken);

    private static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;

    private async Task<Exception?> TrySendAsync(List<OutboxRow> rows, CancellationToken cancellationToken)
    {
        try
        {
            await transport.SendAsync(rows.ConvertAll(row => row.Message), cancellationToken);
            return null;
        }
        catch (Exception exception) when (exception is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            return exception;
        }
    }

    private async Task<List<OutboxRow>> ReadDueAsync(CancellationToken cancellationToken)
    {
        var rows = new List<OutboxRow>();
        await using var transaction = await database.BeginAsync(cancellationToken);
        await using var select = transaction.CreateCommand(
            MessagingSql.SelectDue,
            ("now", MessagingSql.Time(database.Dialect, time.GetUtcNow())),
            ("limit", options.RelayBatchSize));
        await using (var reader = await select.ExecuteReaderAsync(cancellationToken))
        {
            while (await reader.ReadAsync(cancellationToken))
            {
                rows.Add(new OutboxRow(
                    reader.GetInt64(0),
                    reader.GetInt32(8),
                    new TransportMessage(
                        MessageId: reader.GetString(1),
                        Type: reader.GetString(2),
                        CorrelationId: reader.GetString(3),
                        Body: Encoding.UTF8.GetBytes(reader.GetString(4)),
                        TraceParent: reader.IsDBNull(5) ? null : reader.GetString(5),
                        Source: reader.GetString(6),
                        CreatedAt: MessagingSql.ReadTime(reader, 7))));
            }
        }

        await transaction.CommitAsync(cancellationToken);
        return rows;
    }

    private async Task MarkSentAsync(List<OutboxRow> rows, CancellationToken cancellationToken)
    {
        await using var transaction = await database.BeginAsync(cancellationToken);
        var now = MessagingSql.Time(database.Dialect, time.GetUtcNow());
        foreach (var row in rows)
        {
            await using var update = transaction.CreateCommand(MessagingSql.MarkSent, ("now", now), ("seq", row.Seq));
            await update.ExecuteNonQueryAsync(cancellationToken);
        }

        await transaction.CommitAsync(cancellationToken);
    }

    private async Task RecordFailureAsync(OutboxRow row, Exception exception, CancellationToken cancellationToken)
    {
        var next = time.GetUtcNow() + options.RetryBackoff(row.SendAttempts + 1, _random01());
        await using var transaction = await database.BeginAsync(cancellationToken);
        await using var update = transaction.CreateCommand(
            MessagingSql.RecordSendFailure,
            ("error", exception.Message),
            ("next", MessagingSql.Time(database.Dialect, next)),
            ("seq", row.Seq));
        await update.ExecuteNonQueryAsync(cancellationToken);
        await transaction.CommitAsync(cancellationToken);
    }

    private sealed record OutboxRow(long Seq, int SendAttempts, TransportMessage Message);
}
