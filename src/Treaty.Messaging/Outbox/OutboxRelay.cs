using System.Text;
using System.Threading.Channels;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Treaty.AspNetCore.Data;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging;

/// <summary>
/// Moves committed outbox rows to the transport, in order, and marks them sent only after the
/// transport accepted them: a crash in between sends them again (the consumers' inboxes drop the
/// copy). Woken by every publish, and by a poll for rows written by other processes.
/// </summary>
internal sealed class OutboxRelay(
    ParticipantDatabase database,
    IMessageTransport transport,
    MessagingOptions options,
    TimeProvider time,
    ILogger<OutboxRelay> logger) : BackgroundService
{
    private readonly Channel<bool> _nudges = Channel.CreateBounded<bool>(new BoundedChannelOptions(1) { FullMode = BoundedChannelFullMode.DropWrite });

    public void Nudge() => _nudges.Writer.TryWrite(true);

    /// <summary>Sends one batch of unsent rows and marks them sent; returns how many were sent. Throws what the transport threw.</summary>
    public async Task<int> RelayOnceAsync(CancellationToken cancellationToken)
    {
        var batch = await ReadUnsentAsync(cancellationToken);
        if (batch.Count == 0)
        {
            return 0;
        }

        var messages = batch.ConvertAll(row => row.Message);
        try
        {
            await transport.SendAsync(messages, cancellationToken);
        }
        catch (Exception exception) when (exception is not OperationCanceledException || !cancellationToken.IsCancellationRequested)
        {
            await RecordFailureAsync(batch, exception, cancellationToken);
            throw;
        }

        await MarkSentAsync(batch, cancellationToken);
        return batch.Count;
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var failures = 0;
        while (!stoppingToken.IsCancellationRequested)
        {
            TimeSpan wait;
            try
            {
                var sent = await RelayOnceAsync(stoppingToken);
                failures = 0;
                if (sent == options.RelayBatchSize)
                {
                    continue; // more may be waiting
                }

                wait = options.RelayPollInterval;
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
            catch (Exception exception)
            {
                failures++;
                wait = Backoff.Delay(failures, options.RetryDelay, options.MaxRetryDelay);
                MessagingLog.SendFailed(logger, exception, transport.Name, failures, wait);
                // After a failure wait the backoff out: a nudge must not turn it into a hot loop.
                try
                {
                    await Task.Delay(wait, time, stoppingToken);
                }
                catch (OperationCanceledException)
                {
                    return;
                }

                continue;
            }

            await WaitForNudgeAsync(wait, stoppingToken);
        }
    }

    private async Task WaitForNudgeAsync(TimeSpan poll, CancellationToken stoppingToken)
    {
        using var timeout = new CancellationTokenSource(poll, time);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(timeout.Token, stoppingToken);
        try
        {
            await _nudges.Reader.WaitToReadAsync(linked.Token);
            _nudges.Reader.TryRead(out _);
        }
        catch (OperationCanceledException)
        {
            // the poll interval passed, or the host is stopping; the loop decides.
        }
    }

    private async Task<List<OutboxRow>> ReadUnsentAsync(CancellationToken cancellationToken)
    {
        var rows = new List<OutboxRow>();
        await using var transaction = await database.BeginAsync(cancellationToken);
        await using var select = transaction.CreateCommand(MessagingSql.SelectUnsent, ("limit", options.RelayBatchSize));
        await using (var reader = await select.ExecuteReaderAsync(cancellationToken))
        {
            while (await reader.ReadAsync(cancellationToken))
            {
                rows.Add(new OutboxRow(
                    reader.GetInt64(0),
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

    private async Task MarkSentAsync(List<OutboxRow> batch, CancellationToken cancellationToken)
    {
        await using var transaction = await database.BeginAsync(cancellationToken);
        var now = MessagingSql.Time(database.Dialect, time.GetUtcNow());
        foreach (var row in batch)
        {
            await using var update = transaction.CreateCommand(MessagingSql.MarkSent, ("now", now), ("seq", row.Seq));
            await update.ExecuteNonQueryAsync(cancellationToken);
        }

        await transaction.CommitAsync(cancellationToken);
    }

    private async Task RecordFailureAsync(List<OutboxRow> batch, Exception exception, CancellationToken cancellationToken)
    {
        try
        {
            await using var transaction = await database.BeginAsync(cancellationToken);
            foreach (var row in batch)
            {
                await using var update = transaction.CreateCommand(MessagingSql.RecordSendFailure, ("error", exception.Message), ("seq", row.Seq));
                await update.ExecuteNonQueryAsync(cancellationToken);
            }

            await transaction.CommitAsync(cancellationToken);
        }
        catch (Exception recordError) when (recordError is not OperationCanceledException)
        {
            // Only bookkeeping for operators; the rows stay unsent either way.
        }
    }

    private sealed record OutboxRow(long Seq, TransportMessage Message);
}
