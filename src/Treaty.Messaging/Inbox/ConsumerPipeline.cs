using System.Text;
using Microsoft.Extensions.Logging;
using Treaty.AspNetCore.Data;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging;

/// <summary>
/// One subscriber's handling of a delivery: inbox row and handler in one local transaction
/// (a duplicate is acknowledged without running the handler); on an exception roll back, record
/// the attempt durably, answer Retry; after <see cref="MessagingOptions.MaxAttempts"/> failures
/// keep the message in the dead letters and answer DeadLettered.
/// </summary>
internal sealed class ConsumerPipeline(
    ParticipantDatabase database,
    MessagingOptions options,
    TimeProvider time,
    ILogger<ConsumerPipeline> logger)
{
    public string Subscriber => options.ServiceName;

    public ParticipantDatabase Database => database;

    public async Task<DeliveryOutcome> DeliverAsync(TransportMessage message, MessageConsumer consumer, CancellationToken cancellationToken)
    {
        using var activity = TreatyMessagingTelemetry.StartConsume(message, Subscriber);
        using var gidScope = logger.BeginCorrelationScope(message.CorrelationId);
        using var scope = logger.BeginScope(new Dictionary<string, object> { ["messageId"] = message.MessageId });
        int attempt;
        try
        {
            await using var transaction = await database.BeginAsync(cancellationToken);
            var now = MessagingSql.Time(database.Dialect, time.GetUtcNow());
            await using (var insert = transaction.CreateCommand(
                MessagingSql.InsertInbox,
                ("subscriber", Subscriber),
                ("message_id", message.MessageId),
                ("type", message.Type),
                ("correlation_id", message.CorrelationId),
                ("now", now)))
            {
                if (await insert.ExecuteNonQueryAsync(cancellationToken) == 0)
                {
                    MessagingLog.Duplicate(logger, message.MessageId, message.Type, Subscriber);
                    activity?.SetTag("treaty.messaging.outcome", "duplicate");
                    return DeliveryOutcome.Handled;
                }
            }

            attempt = await CountAttemptsAsync(transaction, message.MessageId, cancellationToken) + 1;
            await consumer(transaction, ToReceived(message, attempt), cancellationToken);
            await transaction.CommitAsync(cancellationToken);
            activity?.SetTag("treaty.messaging.outcome", "handled");
            return DeliveryOutcome.Handled;
        }
        catch (OperationCanceledException) when (cancellationToken.IsCancellationRequested)
        {
            throw;
        }
        catch (Exception exception)
        {
            // The transaction above is disposed (rolled back) by now; the attempt is recorded in a new one.
            activity?.SetStatus(System.Diagnostics.ActivityStatusCode.Error, exception.Message);
            var outcome = await RecordFailureAsync(message, exception, cancellationToken);
            activity?.SetTag("treaty.messaging.outcome", outcome == DeliveryOutcome.DeadLettered ? "dead-lettered" : "retry");
            return outcome;
        }
    }

    private async Task<DeliveryOutcome> RecordFailureAsync(TransportMessage message, Exception exception, CancellationToken cancellationToken)
    {
        await using var transaction = await database.BeginAsync(cancellationToken);
        var now = MessagingSql.Time(database.Dialect, time.GetUtcNow());
        var failures = await CountAttemptsAsync(transaction, message.MessageId, cancellationToken) + 1;
        await using (var next = transaction.CreateCommand(MessagingSql.NextAttemptSeq, ("subscriber", Subscriber), ("message_id", message.MessageId)))
        {
            var seq = Convert.ToInt32(await next.ExecuteScalarAsync(cancellationToken), System.Globalization.CultureInfo.InvariantCulture);
            await using var insert = transaction.CreateCommand(
                MessagingSql.InsertAttempt,
                ("subscriber", Subscriber),
                ("message_id", message.MessageId),
                ("seq", seq),
                ("now", now),
                ("error", exception.ToString()));
            await insert.ExecuteNonQueryAsync(cancellationToken);
        }

        if (failures < options.MaxAttempts)
        {
            await transaction.CommitAsync(cancellationToken);
            MessagingLog.HandlerFailed(logger, exception, message.MessageId, message.Type, Subscriber, failures, options.MaxAttempts);
            return DeliveryOutcome.Retry;
        }

        await using (var dead = transaction.CreateCommand(
            MessagingSql.UpsertDeadLetter,
            ("subscriber", Subscriber),
            ("message_id", message.MessageId),
            ("type", message.Type),
            ("correlation_id", message.CorrelationId),
            ("body", Encoding.UTF8.GetString(message.Body.Span)),
            ("trace_parent", message.TraceParent),
            ("source", message.Source),
            ("created_at", MessagingSql.Time(database.Dialect, message.CreatedAt)),
            ("error", exception.ToString()),
            ("now", now)))
        {
            await dead.ExecuteNonQueryAsync(cancellationToken);
        }

        await transaction.CommitAsync(cancellationToken);
        MessagingLog.DeadLettered(logger, exception, message.MessageId, message.Type, Subscriber, failures);
        return DeliveryOutcome.DeadLettered;
    }

    private async Task<int> CountAttemptsAsync(ParticipantTransaction transaction, string messageId, CancellationToken cancellationToken)
    {
        await using var count = transaction.CreateCommand(MessagingSql.CountAttempts, ("subscriber", Subscriber), ("message_id", messageId));
        return Convert.ToInt32(await count.ExecuteScalarAsync(cancellationToken), System.Globalization.CultureInfo.InvariantCulture);
    }

    private static ReceivedMessage ToReceived(TransportMessage message, int attempt) => new(
        message.MessageId, message.Type, message.CorrelationId, message.Body, message.TraceParent, message.Source, message.CreatedAt, attempt);
}
