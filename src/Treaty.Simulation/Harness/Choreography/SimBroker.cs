using System.Globalization;
using Treaty.Messaging.Transport;

namespace Treaty.Simulation.Harness.Choreography;

/// <summary>What this seed does to the choreography's messages and services (rates are per event, while <see cref="Active"/>).</summary>
internal sealed class ChoreographyFaults
{
    public bool Active { get; set; } = true;

    /// <summary>A delivery to a subscriber never arrives (the broker redelivers it after its visibility timeout).</summary>
    public double LoseDelivery { get; init; }

    /// <summary>A delivery arrives twice.</summary>
    public double DuplicateDelivery { get; init; }

    /// <summary>A delivery (or a publish, a report) takes 50 ms to 2 s instead of a few ms, so later ones overtake it.</summary>
    public double Delay { get; init; }

    /// <summary>A consumer's acknowledgement is lost on its way to the broker (so the delivery comes again).</summary>
    public double LoseAck { get; init; }

    /// <summary>The broker refuses a publish (the relay backs off and sends the row again).</summary>
    public double PublishFails { get; init; }

    /// <summary>The broker took a publish but its confirm is lost: the relay sends it again (a duplicate).</summary>
    public double ConfirmLost { get; init; }

    /// <summary>A handler throws after its writes: the inbox transaction rolls back, the delivery is answered Retry.</summary>
    public double HandlerError { get; init; }

    /// <summary>A report to the coordinator, or its answer, is lost.</summary>
    public double LoseReport { get; init; }

    /// <summary>A service crashes right after a commit that published, before its relay sends the rows.</summary>
    public double CrashAfterCommit { get; init; }

    /// <summary>A service crashes after its relay handed rows to the broker, before it marked them sent.</summary>
    public double CrashAfterPublish { get; init; }

    /// <summary>A service crashes after its inbox transaction committed, before it acknowledged the delivery.</summary>
    public double CrashBeforeAck { get; init; }

    /// <summary>A service crashes once the coordinator's answer to a report arrived, before its reporter marked the rows.</summary>
    public double CrashBeforeMark { get; init; }

    public override string ToString() => string.Create(CultureInfo.InvariantCulture,
        $"lose={LoseDelivery:0.00} dup={DuplicateDelivery:0.00} delay={Delay:0.00} lose-ack={LoseAck:0.00} publish-fails={PublishFails:0.00} confirm-lost={ConfirmLost:0.00} handler-error={HandlerError:0.00} lose-report={LoseReport:0.00} crash commit/publish/ack/report-mark={CrashAfterCommit:0.00}/{CrashAfterPublish:0.00}/{CrashBeforeAck:0.00}/{CrashBeforeMark:0.00}");
}

/// <summary>
/// The simulated message broker between the services' outbox relays and their inboxes: durable
/// queues (one per subscriber, as the Shop's RabbitMQ topology), at-least-once as a whole. A
/// delivery may be lost, duplicated or delayed (so deliveries overtake each other); a delivery not
/// acknowledged within the visibility timeout is delivered again, and so is everything unacknowledged
/// when a consumer comes back after a crash. A publish may be refused, or taken with its confirm
/// lost. It never loses a message it took: that is the broker's half of the guarantee.
/// </summary>
internal sealed class SimBroker
{
    private readonly SimScheduler _scheduler;
    private readonly SimNode _node;
    private readonly Random _random;
    private readonly ChoreographyFaults _faults;
    private readonly TimeSpan _visibility;
    private readonly IReadOnlyList<Subscription> _subscriptions;
    private readonly Dictionary<string, List<Envelope>> _queues = new(StringComparer.Ordinal);
    private readonly Dictionary<string, long> _lastArrived = new(StringComparer.Ordinal);
    private long _tag;

    public SimBroker(SimScheduler scheduler, Random random, ChoreographyFaults faults, TimeSpan visibility, IReadOnlyList<Subscription> subscriptions)
    {
        _scheduler = scheduler;
        _node = new SimNode(scheduler, "broker");
        _random = random;
        _faults = faults;
        _visibility = visibility;
        _subscriptions = subscriptions;
        foreach (var subscription in subscriptions)
        {
            _queues[subscription.Subscriber] = [];
        }
    }

    /// <summary>Hands an arriving delivery to the subscriber's current process (if it is up), with its ack and nack.</summary>
    public Action<string, TransportMessage, Action, Action>? Consumer { get; set; }

    public int Published { get; private set; }

    public int Deliveries { get; private set; }

    public int Lost { get; private set; }

    public int Duplicated { get; private set; }

    public int Delayed { get; private set; }

    public int Reordered { get; private set; }

    public int Redelivered { get; private set; }

    public int AcksLost { get; private set; }

    public int ToDownConsumer { get; private set; }

    /// <summary>Messages taken and not acknowledged yet.</summary>
    public int Pending => _queues.Values.Sum(q => q.Count);

    /// <summary>The broker took <paramref name="message"/> (a publish that reached it): one envelope per subscriber of its type.</summary>
    public void Publish(TransportMessage message)
    {
        foreach (var subscription in _subscriptions)
        {
            if (!subscription.Types.Contains(message.Type, StringComparer.Ordinal))
            {
                continue;
            }

            var envelope = new Envelope(message, subscription.Subscriber, ++_tag);
            _queues[subscription.Subscriber].Add(envelope);
            Published++;
            Trace($"took {message.Type} {message.CorrelationId} for {subscription.Subscriber} (d{envelope.Tag})");
            Deliver(envelope);
        }
    }

    /// <summary>A consumer came back: everything it had not acknowledged is delivered again now (a closed channel requeues its unacked deliveries).</summary>
    public void Reconnected(string subscriber)
    {
        foreach (var envelope in _queues[subscriber].ToList())
        {
            Redelivered++;
            Deliver(envelope);
        }
    }

    public string Describe() => string.Join(", ", _queues.SelectMany(q => q.Value).Select(e => $"d{e.Tag} {e.Message.Type} {e.Message.CorrelationId}→{e.Subscriber}"));

    private void Deliver(Envelope envelope)
    {
        var generation = ++envelope.Generation;
        var copies = 1;
        if (_faults.Active && _random.NextDouble() < _faults.DuplicateDelivery)
        {
            Duplicated++;
            copies = 2;
        }

        for (var copy = 0; copy < copies; copy++)
        {
            if (_faults.Active && _random.NextDouble() < _faults.LoseDelivery)
            {
                Lost++;
                Trace($"delivery LOST d{envelope.Tag} {envelope.Message.Type} {envelope.Message.CorrelationId}→{envelope.Subscriber}");
                continue;
            }

            var delay = TimeSpan.FromMicroseconds(100 + _random.Next(3_000));
            if (_faults.Active && _random.NextDouble() < _faults.Delay)
            {
                Delayed++;
                delay += TimeSpan.FromMilliseconds(50 + _random.Next(2_000));
            }

            _scheduler.At(_node, delay, () => Arrive(envelope));
        }

        _scheduler.At(_node, _visibility, () =>
        {
            if (!envelope.Acked && envelope.Generation == generation)
            {
                Redelivered++;
                Trace($"d{envelope.Tag} not acknowledged within {_visibility.TotalMilliseconds:0} ms: delivered again");
                Deliver(envelope);
            }
        });
    }

    private void Arrive(Envelope envelope)
    {
        Deliveries++;
        var last = _lastArrived.GetValueOrDefault(envelope.Subscriber);
        if (envelope.Tag < last)
        {
            Reordered++;
        }

        _lastArrived[envelope.Subscriber] = Math.Max(last, envelope.Tag);
        var tag = envelope.Tag;
        Consumer!(envelope.Subscriber, envelope.Message, () => AckFromConsumer(envelope), () => NackFromConsumer(envelope));

        void AckFromConsumer(Envelope e)
        {
            if (_faults.Active && _random.NextDouble() < _faults.LoseAck)
            {
                AcksLost++;
                Trace($"ack LOST d{tag}");
                return;
            }

            _scheduler.At(_node, TimeSpan.FromMicroseconds(100 + _random.Next(2_000)), () =>
            {
                if (!e.Acked)
                {
                    e.Acked = true;
                    _queues[e.Subscriber].Remove(e);
                    Trace($"d{tag} acknowledged");
                }
            });
        }

        void NackFromConsumer(Envelope e) => _scheduler.At(_node, TimeSpan.FromMilliseconds(50 + _random.Next(500)), () =>
        {
            if (!e.Acked)
            {
                Redelivered++;
                Deliver(e);
            }
        });
    }

    /// <summary>A delivery arrived while its subscriber was down: nothing takes it (the visibility timeout or the reconnect brings it again).</summary>
    public void NobodyHome() => ToDownConsumer++;

    private void Trace(string text) => _scheduler.Trace.Add(_scheduler, _node.Name, text);

    private sealed class Envelope(TransportMessage message, string subscriber, long tag)
    {
        public TransportMessage Message { get; } = message;

        public string Subscriber { get; } = subscriber;

        public long Tag { get; } = tag;

        public long Generation { get; set; }

        public bool Acked { get; set; }
    }
}

/// <summary>
/// One service process's side of the broker, as its <see cref="Treaty.Messaging.OutboxRelay"/> sees it
/// (<see cref="IMessageTransport.SendAsync"/>): the publish takes a little time, may be refused,
/// may be taken with its confirm lost, and the process may crash right after the broker took it,
/// before the relay marks the rows sent. The subscribing side is the harness's: the broker hands
/// deliveries to <see cref="Treaty.Messaging.ConsumerPipeline"/> directly.
/// </summary>
/// <param name="withoutConfirms">Known-bad: the send returns at once and the publish leaves later, unconfirmed (a refused one is dropped silently, a crash loses it).</param>
internal sealed class SimTransport(SimScheduler scheduler, SimBroker broker, ChoreographyFaults faults, Random random, Func<bool> crashAfterPublish, bool withoutConfirms = false) : IMessageTransport
{
    public string Name => "sim";

    public int PublishFailures { get; private set; }

    public int ConfirmsLost { get; private set; }

    public async Task SendAsync(IReadOnlyList<TransportMessage> messages, CancellationToken cancellationToken)
    {
        var node = SimNode.Here;
        var latency = TimeSpan.FromMicroseconds(100 + random.Next(2_000));
        if (faults.Active && random.NextDouble() < faults.Delay)
        {
            latency += TimeSpan.FromMilliseconds(20 + random.Next(500));
        }

        if (withoutConfirms)
        {
            var refused = faults.Active && random.NextDouble() < faults.PublishFails;
            PublishFailures += refused ? 1 : 0;
            scheduler.At(node, latency, () =>
            {
                if (!refused)
                {
                    foreach (var message in messages)
                    {
                        broker.Publish(message);
                    }
                }
            });
            return;
        }

        if (faults.Active && random.NextDouble() < faults.PublishFails)
        {
            await Sleep(node, latency);
            PublishFailures++;
            throw new IOException("simulated: the broker refused the publish");
        }

        await Sleep(node, latency);
        foreach (var message in messages)
        {
            broker.Publish(message);
        }

        if (crashAfterPublish())
        {
            // The process is gone: the relay never resumes, the rows stay unsent in its database.
            await new TaskCompletionSource().Task;
        }

        if (faults.Active && random.NextDouble() < faults.ConfirmLost)
        {
            ConfirmsLost++;
            throw new IOException("simulated: the publish confirm was lost");
        }
    }

    public Task<IAsyncDisposable> SubscribeAsync(Subscription subscription, MessageHandler handler, CancellationToken cancellationToken) =>
        throw new NotSupportedException("The simulated broker delivers to the consumer pipelines itself.");

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;

    private Task Sleep(SimNode node, TimeSpan delay)
    {
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        scheduler.At(node, delay, () => done.SetResult());
        return done.Task;
    }
}
