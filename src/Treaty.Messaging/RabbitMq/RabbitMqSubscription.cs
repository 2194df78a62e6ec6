using RabbitMQ.Client;
using RabbitMQ.Client.Events;
using RabbitMQ.Client.Exceptions;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging.RabbitMq;

/// <summary>One subscriber's consumer on its own channel, with manual acknowledgements.</summary>
internal sealed class RabbitMqSubscription : IAsyncDisposable
{
    private readonly RabbitMqTransport _transport;
    private readonly IChannel _channel;
    private readonly string _queue;
    private readonly Subscription _subscription;
    private readonly MessageHandler _handler;
    private readonly CancellationTokenSource _stopping = new();
    private string? _consumerTag;
    private int _disposed;

    public RabbitMqSubscription(RabbitMqTransport transport, IChannel channel, string queue, Subscription subscription, MessageHandler handler)
    {
        _transport = transport;
        _channel = channel;
        _queue = queue;
        _subscription = subscription;
        _handler = handler;
    }

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        var consumer = new AsyncEventingBasicConsumer(_channel);
        consumer.ReceivedAsync += (_, delivery) => OnDeliveryAsync(delivery);
        _consumerTag = await _channel.BasicConsumeAsync(_queue, autoAck: false, consumer, cancellationToken);
    }

    public async ValueTask DisposeAsync()
    {
        using var deadline = new CancellationTokenSource(RabbitMqDefaults.ShutdownTimeout, _transport.Options.TimeProvider);
        await StopAsync(deadline.Token);
    }

    /// <summary>Cancels the consumer and closes its channel, waiting for the broker until <paramref name="deadline"/>.</summary>
    public async Task StopAsync(CancellationToken deadline)
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 1)
            return;
        _transport.Remove(this);
        await _stopping.CancelAsync();
        // Closing the channel (which cancels the consumer) returns every unacknowledged delivery to the queue, to be
        // delivered again. _stopping is not disposed: a handler still finishing may read its token.
        await RabbitMqTransport.BoundedAsync(async () =>
        {
            if (_consumerTag is not null && _channel.IsOpen)
            {
                try
                {
                    await _channel.BasicCancelAsync(_consumerTag);
                }
                catch (Exception e) when (e is AlreadyClosedException or OperationInterruptedException or IOException or OperationCanceledException)
                {
                    // Gone with the channel.
                }
            }

            await RabbitMqTransport.CloseQuietlyAsync(_channel);
        }, deadline);
    }

    private async Task OnDeliveryAsync(BasicDeliverEventArgs delivery)
    {
        var logger = _transport.Logger;
        var stopping = _stopping.Token;
        var message = RabbitMqMessageMapping.FromDelivery(delivery.BasicProperties, delivery.RoutingKey, delivery.Body);
        if (message is null)
        {
            RabbitMqLog.Malformed(logger, _queue, delivery.DeliveryTag);
            await DeadLetterAsync(delivery, "malformed: no message id or type");
            return;
        }

        using var scope = logger.BeginCorrelationScope(message.CorrelationId);
        DeliveryOutcome outcome;
        try
        {
            outcome = await _handler(message, stopping);
        }
        catch (OperationCanceledException) when (stopping.IsCancellationRequested)
        {
            // Stopping: leave it unacknowledged; closing the channel requeues it.
            return;
        }
        catch (Exception e)
        {
            RabbitMqLog.HandlerFailed(logger, e, _subscription.Subscriber, message.MessageId, message.Type);
            outcome = DeliveryOutcome.Retry;
        }

        if (stopping.IsCancellationRequested && outcome == DeliveryOutcome.Retry)
            return;

        switch (outcome)
        {
            case DeliveryOutcome.Handled:
            case DeliveryOutcome.DeadLettered:
                await SettleAsync(() => _channel.BasicAckAsync(delivery.DeliveryTag, multiple: false).AsTask(), message.MessageId);
                break;
            default:
                var attempts = RabbitMqMessageMapping.RejectionCount(delivery.BasicProperties, _queue) + 1;
                if (attempts >= _transport.Options.MaxDeliveryAttempts)
                {
                    RabbitMqLog.GaveUp(logger, _subscription.Subscriber, message.MessageId, attempts);
                    await DeadLetterAsync(delivery, $"gave up after {attempts} attempts");
                }
                else
                {
                    // Rejected without requeue: the main queue dead-letters it into the retry queue, which holds
                    // it for the retry delay and sends it back.
                    await SettleAsync(() => _channel.BasicNackAsync(delivery.DeliveryTag, multiple: false, requeue: false).AsTask(), message.MessageId);
                }

                break;
        }
    }

    private async Task DeadLetterAsync(BasicDeliverEventArgs delivery, string reason)
    {
        try
        {
            // Copy first, acknowledge after the confirm: a crash in between leaves a duplicate, never a loss.
            await _transport.PublishDeadLetterAsync(_queue, delivery.BasicProperties, delivery.Body, reason, _stopping.Token);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            RabbitMqLog.DeadLetterFailed(_transport.Logger, e, _queue);
            await SettleAsync(() => _channel.BasicNackAsync(delivery.DeliveryTag, multiple: false, requeue: false).AsTask(), delivery.BasicProperties.MessageId ?? "?");
            return;
        }

        await SettleAsync(() => _channel.BasicAckAsync(delivery.DeliveryTag, multiple: false).AsTask(), delivery.BasicProperties.MessageId ?? "?");
    }

    private async Task SettleAsync(Func<Task> settle, string messageId)
    {
        try
        {
            await settle();
        }
        catch (Exception e) when (e is AlreadyClosedException or OperationInterruptedException or IOException or ObjectDisposedException)
        {
            // The channel went away before the ack: the broker delivers the message again, and the inbox
            // recognises it.
            RabbitMqLog.SettleFailed(_transport.Logger, _subscription.Subscriber, messageId, e.Message);
        }
    }
}
