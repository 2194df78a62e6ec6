using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using RabbitMQ.Client;
using RabbitMQ.Client.Exceptions;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging.RabbitMq;

/// <summary>
/// <see cref="IMessageTransport"/> over RabbitMQ: persistent messages on a durable topic exchange (routing key = type),
/// one durable queue per subscriber, publisher confirms, manual acknowledgements, a retry queue with a delay, a
/// dead-letter queue, and the client's automatic connection and topology recovery. See docs/messaging-rabbitmq.md.
/// </summary>
public sealed class RabbitMqTransport : IMessageTransport
{
    private readonly RabbitMqTransportOptions _options;
    private readonly ConnectionFactory _factory;
    private readonly ILogger _logger;
    private readonly SemaphoreSlim _connectLock = new(1, 1);
    private readonly SemaphoreSlim _publishLock = new(1, 1);
    private readonly List<RabbitMqSubscription> _subscriptions = [];
    private readonly Lock _subscriptionsLock = new();
    private IConnection? _connection;
    private IChannel? _publishChannel;
    private bool _disposed;

    private RabbitMqTransport(RabbitMqTransportOptions options)
    {
        _options = options;
        _logger = options.LoggerFactory?.CreateLogger<RabbitMqTransport>() ?? NullLogger<RabbitMqTransport>.Instance;
        _factory = new ConnectionFactory
        {
            Uri = options.Uri!,
            // Reconnect, then re-declare the exchanges, queues and bindings and restart the consumers: a broker
            // restart costs the unacknowledged deliveries a redelivery, never the messages.
            AutomaticRecoveryEnabled = true,
            TopologyRecoveryEnabled = true,
            NetworkRecoveryInterval = options.NetworkRecoveryInterval,
            ClientProvidedName = options.ConnectionName,
        };
    }

    /// <summary>Creates a transport; it connects on first use.</summary>
    /// <exception cref="ArgumentException">An option cannot work.</exception>
    public static RabbitMqTransport Create(RabbitMqTransportOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        return new RabbitMqTransport(options);
    }

    /// <inheritdoc />
    public string Name => "rabbitmq";

    internal RabbitMqTransportOptions Options => _options;

    internal ILogger Logger => _logger;

    /// <summary>
    /// Publishes every message persistently and returns once the broker confirmed each one. Throws when the
    /// broker refuses one (nack), the confirms do not arrive within <see cref="RabbitMqTransportOptions.ConfirmTimeout"/>,
    /// or the connection fails; some of the messages may have been delivered then, and sending them again is safe
    /// (consumers deduplicate on the message id).
    /// </summary>
    /// <remarks>
    /// A message whose type no queue is bound to is dropped by the exchange, as publish/subscribe does: declare a
    /// subscriber's queue (<see cref="DeclareSubscriptionAsync"/> or <see cref="SubscribeAsync"/>) before its events
    /// are published.
    /// </remarks>
    public async Task SendAsync(IReadOnlyList<TransportMessage> messages, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(messages);
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (messages.Count == 0)
            return;

        await _publishLock.WaitAsync(cancellationToken);
        // The timeout covers everything the broker has to answer: opening the channel and the confirms.
        using var deadline = new CancellationTokenSource(_options.ConfirmTimeout, _options.TimeProvider);
        using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, deadline.Token);
        try
        {
            var channel = await GetPublishChannelAsync(linked.Token);
            // Every publish is started before any confirm is awaited, so a batch costs one round trip, not one each.
            var confirms = new List<Task>(messages.Count);
            foreach (var message in messages)
            {
                confirms.Add(channel.BasicPublishAsync(_options.ExchangeName, message.Type, mandatory: false, ToProperties(message), message.Body, cancellationToken).AsTask());
            }

            var all = Task.WhenAll(confirms);
            try
            {
                await all.WaitAsync(linked.Token);
            }
            catch (OperationCanceledException)
            {
                // The confirms may still fail later; observe them so they do not surface as unobserved exceptions.
                _ = all.ContinueWith(static t => t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
                throw;
            }
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested && !cancellationToken.IsCancellationRequested)
        {
            RabbitMqLog.ConfirmTimedOut(_logger, messages.Count, _options.ConfirmTimeout);
            throw new TimeoutException($"RabbitMQ did not confirm {messages.Count} message(s) within {_options.ConfirmTimeout}.");
        }
        catch (PublishException e)
        {
            RabbitMqLog.PublishNacked(_logger, e);
            throw;
        }
        finally
        {
            _publishLock.Release();
        }
    }

    /// <summary>
    /// Declares the subscriber's queues and binds them to the types (what <see cref="SubscribeAsync"/> does), and
    /// starts consuming: each delivery is acknowledged after the handler returns
    /// <see cref="DeliveryOutcome.Handled"/> or <see cref="DeliveryOutcome.DeadLettered"/>; a
    /// <see cref="DeliveryOutcome.Retry"/> or an exception rejects it into the retry queue, from which it comes back
    /// after <see cref="RabbitMqTransportOptions.RetryDelay"/>.
    /// </summary>
    public async Task<IAsyncDisposable> SubscribeAsync(Subscription subscription, MessageHandler handler, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(subscription);
        ArgumentNullException.ThrowIfNull(handler);
        ObjectDisposedException.ThrowIf(_disposed, this);
        ValidateSubscription(subscription);

        var connection = await GetConnectionAsync(cancellationToken);
        var channel = await connection.CreateChannelAsync(cancellationToken: cancellationToken);
        try
        {
            var queue = await RabbitMqTopology.DeclareSubscriberAsync(channel, _options.ExchangeName, subscription, _options.RetryDelay, cancellationToken);
            await channel.BasicQosAsync(prefetchSize: 0, prefetchCount: _options.PrefetchCount, global: false, cancellationToken);
            var result = new RabbitMqSubscription(this, channel, queue, subscription, handler);
            await result.StartAsync(cancellationToken);
            lock (_subscriptionsLock)
                _subscriptions.Add(result);
            RabbitMqLog.Subscribed(_logger, subscription.Subscriber, queue, string.Join(",", subscription.Types));
            return result;
        }
        catch
        {
            await channel.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// Declares the subscriber's queues and bindings without consuming, so messages published from now on wait in
    /// its queue even before the subscriber first runs (deployment-time provisioning).
    /// </summary>
    public async Task DeclareSubscriptionAsync(Subscription subscription, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(subscription);
        ValidateSubscription(subscription);
        var connection = await GetConnectionAsync(cancellationToken);
        var channel = await connection.CreateChannelAsync(cancellationToken: cancellationToken);
        try
        {
            await RabbitMqTopology.DeclareSubscriberAsync(channel, _options.ExchangeName, subscription, _options.RetryDelay, cancellationToken);
        }
        finally
        {
            await CloseQuietlyAsync(channel);
        }
    }

    /// <summary>
    /// Stops every subscription and closes the connection, waiting for the broker at most
    /// <see cref="RabbitMqDefaults.ShutdownTimeout"/> in all; what the broker has not answered by then finishes in
    /// the background. Unacknowledged deliveries are redelivered once the connection is gone.
    /// </summary>
    public async ValueTask DisposeAsync()
    {
        if (_disposed)
            return;
        _disposed = true;
        // The client's own RPC timeout (20 s) ignores cancellation, so each step is abandoned, not cancelled, at the
        // shared deadline.
        using var deadline = new CancellationTokenSource(RabbitMqDefaults.ShutdownTimeout, _options.TimeProvider);
        RabbitMqSubscription[] subscriptions;
        lock (_subscriptionsLock)
            subscriptions = [.. _subscriptions];
        foreach (var subscription in subscriptions)
            await subscription.StopAsync(deadline.Token);

        if (_publishChannel is { } publishChannel)
            await BoundedAsync(() => CloseQuietlyAsync(publishChannel), deadline.Token);
        if (_connection is { } connection)
        {
            await BoundedAsync(async () =>
            {
                // abort: ignore the errors of a connection that is already gone.
                await connection.CloseAsync(200, "Goodbye", RabbitMqDefaults.ShutdownTimeout, abort: true, CancellationToken.None);
                await connection.DisposeAsync();
            }, deadline.Token);
        }
    }

    internal void Remove(RabbitMqSubscription subscription)
    {
        lock (_subscriptionsLock)
            _subscriptions.Remove(subscription);
    }

    /// <summary>Publishes a copy of a given-up delivery to the subscriber's dead-letter queue and waits for the confirm.</summary>
    internal async Task PublishDeadLetterAsync(string mainQueue, IReadOnlyBasicProperties properties, ReadOnlyMemory<byte> body, string reason, CancellationToken cancellationToken)
    {
        await _publishLock.WaitAsync(cancellationToken);
        try
        {
            var channel = await GetPublishChannelAsync(cancellationToken);
            var copy = RabbitMqMessageMapping.CopyForDeadLetter(properties, reason);
            await channel.BasicPublishAsync(RabbitMqTopology.DeadLetterExchange(_options.ExchangeName), RabbitMqTopology.DeadLetterQueue(mainQueue), mandatory: false, copy, body, cancellationToken)
                .AsTask().WaitAsync(_options.ConfirmTimeout, _options.TimeProvider, cancellationToken);
        }
        finally
        {
            _publishLock.Release();
        }
    }

    /// <summary>Closes a channel, quietly if it is already gone.</summary>
    internal static async Task CloseQuietlyAsync(IChannel channel)
    {
        try
        {
            if (channel.IsOpen)
                await channel.CloseAsync();
        }
        catch (Exception e) when (e is AlreadyClosedException or OperationInterruptedException or IOException or ObjectDisposedException or OperationCanceledException)
        {
            // The channel went with its connection.
        }

        await channel.DisposeAsync();
    }

    /// <summary>Runs a shutdown step, waiting for it until <paramref name="deadline"/>; after that it goes on alone.</summary>
    internal static async Task BoundedAsync(Func<Task> step, CancellationToken deadline)
    {
        var task = Task.Run(step, CancellationToken.None);
        try
        {
            await task.WaitAsync(deadline);
        }
        catch (OperationCanceledException) when (deadline.IsCancellationRequested)
        {
            _ = task.ContinueWith(static t => t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
        }
        catch (Exception e) when (e is AlreadyClosedException or OperationInterruptedException or IOException or ObjectDisposedException or OperationCanceledException)
        {
            // Already gone.
        }
    }

    private static BasicProperties ToProperties(TransportMessage message) => RabbitMqMessageMapping.ToProperties(message);

    private static void ValidateSubscription(Subscription subscription)
    {
        if (string.IsNullOrWhiteSpace(subscription.Subscriber))
            throw new ArgumentException("A subscription needs a subscriber name.", nameof(subscription));
        if (subscription.Types.Count == 0)
            throw new ArgumentException($"Subscription {subscription.Subscriber} has no types.", nameof(subscription));
        foreach (var type in subscription.Types)
        {
            // The types become topic binding keys, where * and # are wildcards.
            if (string.IsNullOrWhiteSpace(type) || type.Contains('*', StringComparison.Ordinal) || type.Contains('#', StringComparison.Ordinal))
                throw new ArgumentException($"Subscription {subscription.Subscriber}: '{type}' is not a message type (no empty types, no * or #).", nameof(subscription));
        }
    }

    private async Task<IConnection> GetConnectionAsync(CancellationToken cancellationToken)
    {
        if (_connection is { } existing)
            return existing;
        await _connectLock.WaitAsync(cancellationToken);
        try
        {
            if (_connection is null)
            {
                // The client recovers a connection it once opened; a first connect that fails throws, and the next
                // call tries again.
                var connection = await _factory.CreateConnectionAsync(cancellationToken);
                connection.ConnectionShutdownAsync += (_, args) =>
                {
                    RabbitMqLog.ConnectionLost(_logger, args.ReplyText);
                    return Task.CompletedTask;
                };
                connection.RecoverySucceededAsync += (_, _) =>
                {
                    RabbitMqLog.ConnectionRecovered(_logger);
                    return Task.CompletedTask;
                };
                _connection = connection;
            }

            return _connection;
        }
        finally
        {
            _connectLock.Release();
        }
    }

    // Called with _publishLock held.
    private async Task<IChannel> GetPublishChannelAsync(CancellationToken cancellationToken)
    {
        if (_publishChannel is { IsClosed: false } open)
            return open;
        if (_publishChannel is not null)
        {
            // A channel the broker closed (not a lost connection, which recovery reopens): start a new one.
            if (_publishChannel.CloseReason is { } reason && _connection is { IsOpen: true })
            {
                RabbitMqLog.PublishChannelClosed(_logger, reason.ReplyText);
                await CloseQuietlyAsync(_publishChannel);
                _publishChannel = null;
            }
            else
            {
                // The connection is down and the client is reconnecting: fail this send; the relay sends it again.
                throw _publishChannel.CloseReason is { } lost
                    ? new AlreadyClosedException(lost)
                    : new InvalidOperationException("The RabbitMQ connection is being recovered.");
            }
        }

        var connection = await GetConnectionAsync(cancellationToken);
        var channel = await connection.CreateChannelAsync(
            new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true),
            cancellationToken);
        await RabbitMqTopology.DeclareExchangesAsync(channel, _options.ExchangeName, cancellationToken);
        _publishChannel = channel;
        return channel;
    }
}
