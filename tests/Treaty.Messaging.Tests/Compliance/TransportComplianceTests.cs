using System.Collections.Concurrent;
using System.Text;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging.Tests;

/// <summary>
/// What every <see cref="IMessageTransport"/> must do, whatever carries the messages. Subclass it
/// once per transport and implement <see cref="CreateTransportAsync"/>.
/// </summary>
/// <remarks>
/// The suite sends the way the outbox relay does: <see cref="IMessageTransport.SendAsync"/> is
/// repeated until it returns, because a transport may refuse (throw) while a subscriber cannot take
/// the message yet — the embedded transport does, a broker does not. So "delivered" here means
/// "delivered once the sender kept trying", which is the contract the relay relies on.
/// Order is not part of the contract, not even within one correlation id: consumers must not
/// depend on it (the choreography's handlers are written against the state they find).
/// </remarks>
public abstract class TransportComplianceTests : IAsyncLifetime
{
    private readonly List<IMessageTransport> _transports = [];
    private readonly List<IAsyncDisposable> _subscriptions = [];
    private readonly CancellationTokenSource _stop = new();

    /// <summary>
    /// Creates the transport of one <paramref name="service"/>. Every transport one test creates
    /// shares one network (or broker). <paramref name="topology"/> lists every subscription the test
    /// will make, before any is made, so a broker can declare durable queues up front (a message
    /// sent before its subscriber subscribes must wait for it) and the embedded transport can route.
    /// A test may create the same service again after disposing its transport: it is the service
    /// coming back after a restart.
    /// </summary>
    protected abstract Task<IMessageTransport> CreateTransportAsync(string service, IReadOnlyList<Subscription> topology);

    /// <summary>
    /// Unique per test (xUnit makes one instance per test): prefix shared resources with it (queue
    /// and exchange names on a broker) so tests running one after another, or in parallel classes,
    /// never see each other's messages.
    /// </summary>
    protected string TestId { get; } = Guid.NewGuid().ToString("N")[..12];

    /// <summary>How long a test waits for an expected delivery.</summary>
    protected virtual TimeSpan DeliveryTimeout => TimeSpan.FromSeconds(20);

    /// <summary>How long a test waits to be confident an unexpected delivery does not come.</summary>
    protected virtual TimeSpan QuietPeriod => TimeSpan.FromMilliseconds(500);

    public virtual Task InitializeAsync() => Task.CompletedTask;

    public virtual async Task DisposeAsync()
    {
        await _stop.CancelAsync();
        foreach (var subscription in _subscriptions)
        {
            await subscription.DisposeAsync();
        }

        foreach (var transport in _transports)
        {
            await transport.DisposeAsync();
        }

        _stop.Dispose();
    }

    [Fact]
    public async Task Send_DeliversEachMessageToEverySubscriberOfItsType_AndOnlyThose()
    {
        Subscription billing = new("billing", ["order.created"]);
        Subscription shipping = new("shipping", ["order.created", "payment.reserved"]);
        Subscription audit = new("audit", ["payment.reserved"]);
        Subscription[] topology = [billing, shipping, audit];
        var received = new Dictionary<string, Recorder>();
        foreach (var subscription in topology)
        {
            var recorder = received[subscription.Subscriber] = new Recorder();
            await SubscribeAsync(await CreateAsync(subscription.Subscriber, topology), subscription, recorder.Handle);
        }

        var sender = await CreateAsync("orders", topology);
        var created = Message("order.created", "o-1");
        var reserved = Message("payment.reserved", "o-1");
        var ignored = Message("nobody.listens", "o-1");
        await SendUntilAcceptedAsync(sender, [created, reserved, ignored]);

        await WaitUntilAsync(() => received["billing"].Ids.Contains(created.MessageId)
            && received["shipping"].Ids.Contains(created.MessageId) && received["shipping"].Ids.Contains(reserved.MessageId)
            && received["audit"].Ids.Contains(reserved.MessageId));
        await Task.Delay(QuietPeriod);
        received["billing"].Ids.Distinct().ShouldBe([created.MessageId]);
        received["shipping"].Ids.Distinct().Order().ShouldBe(new[] { created.MessageId, reserved.MessageId }.Order());
        received["audit"].Ids.Distinct().ShouldBe([reserved.MessageId]);
    }

    [Fact]
    public async Task Delivery_CarriesEveryFieldAsSent()
    {
        Subscription billing = new("billing", ["order.created"]);
        var recorder = new Recorder();
        await SubscribeAsync(await CreateAsync("billing", [billing]), billing, recorder.Handle);
        var sender = await CreateAsync("orders", [billing]);
        var sent = Message("order.created", "order/ü 42") with { TraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" };

        await SendUntilAcceptedAsync(sender, [sent]);

        await WaitUntilAsync(() => !recorder.Messages.IsEmpty);
        var got = recorder.Messages.First();
        got.MessageId.ShouldBe(sent.MessageId);
        got.Type.ShouldBe(sent.Type);
        got.CorrelationId.ShouldBe(sent.CorrelationId);
        Encoding.UTF8.GetString(got.Body.Span).ShouldBe(Encoding.UTF8.GetString(sent.Body.Span));
        got.TraceParent.ShouldBe(sent.TraceParent);
        got.Source.ShouldBe(sent.Source);
        got.CreatedAt.ShouldBe(sent.CreatedAt);
    }

    [Fact]
    public async Task Handler_AnsweringRetry_GetsTheMessageAgain()
    {
        Subscription billing = new("billing", ["order.created"]);
        var calls = 0;
        var recorder = new Recorder();
        await SubscribeAsync(await CreateAsync("billing", [billing]), billing, async (message, ct) =>
        {
            await recorder.Handle(message, ct);
            return Interlocked.Increment(ref calls) == 1 ? DeliveryOutcome.Retry : DeliveryOutcome.Handled;
        });
        var sender = await CreateAsync("orders", [billing]);
        var sent = Message("order.created", "o-1");

        await SendUntilAcceptedAsync(sender, [sent]);

        await WaitUntilAsync(() => recorder.Ids.Count(id => id == sent.MessageId) >= 2);
    }

    [Fact]
    public async Task Handler_Throwing_DoesNotAcknowledge_TheMessageComesAgain()
    {
        Subscription billing = new("billing", ["order.created"]);
        var calls = 0;
        await SubscribeAsync(await CreateAsync("billing", [billing]), billing, (message, ct) =>
            Interlocked.Increment(ref calls) == 1
                ? throw new InvalidOperationException("the handler broke")
                : Task.FromResult(DeliveryOutcome.Handled));
        var sender = await CreateAsync("orders", [billing]);

        await SendUntilAcceptedAsync(sender, [Message("order.created", "o-1")]);

        await WaitUntilAsync(() => Volatile.Read(ref calls) >= 2);
    }

    [Fact]
    public async Task Handled_AndDeadLettered_AreAcknowledged_NotDeliveredAgain()
    {
        Subscription billing = new("billing", ["order.created", "order.poison"]);
        var recorder = new Recorder();
        await SubscribeAsync(await CreateAsync("billing", [billing]), billing, async (message, ct) =>
        {
            await recorder.Handle(message, ct);
            return message.Type == "order.poison" ? DeliveryOutcome.DeadLettered : DeliveryOutcome.Handled;
        });
        var sender = await CreateAsync("orders", [billing]);
        var good = Message("order.created", "o-1");
        var poison = Message("order.poison", "o-2");

        await SendUntilAcceptedAsync(sender, [good, poison]);

        await WaitUntilAsync(() => recorder.Ids.Contains(good.MessageId) && recorder.Ids.Contains(poison.MessageId));
        await Task.Delay(QuietPeriod);
        recorder.Ids.Count(id => id == good.MessageId).ShouldBe(1);
        recorder.Ids.Count(id => id == poison.MessageId).ShouldBe(1);
    }

    [Fact]
    public async Task ManyMessagesOfOneCorrelationId_AllArrive_InAnyOrder()
    {
        Subscription billing = new("billing", ["order.created", "order.updated"]);
        var recorder = new Recorder();
        await SubscribeAsync(await CreateAsync("billing", [billing]), billing, recorder.Handle);
        var sender = await CreateAsync("orders", [billing]);
        var sent = Enumerable.Range(0, 20).Select(i => Message(i % 2 == 0 ? "order.created" : "order.updated", "o-1")).ToList();

        await SendUntilAcceptedAsync(sender, sent);

        await WaitUntilAsync(() => sent.All(message => recorder.Ids.Contains(message.MessageId)));
        recorder.Messages.ShouldAllBe(message => message.CorrelationId == "o-1");
    }

    [Fact]
    public async Task SendAsync_AfterDispose_Throws()
    {
        Subscription billing = new("billing", ["order.created"]);
        var sender = await CreateTransportAsync("orders", [billing]);
        await sender.DisposeAsync();

        await Should.ThrowAsync<ObjectDisposedException>(() => sender.SendAsync([Message("order.created", "o-1")], CancellationToken.None));
    }

    [Fact]
    public async Task Subscriber_DownWhileSent_GetsTheMessageWhenItComesBack()
    {
        Subscription billing = new("billing", ["order.created"]);
        var first = new Recorder();
        var before = await CreateTransportAsync("billing", [billing]);
        var subscription = await before.SubscribeAsync(billing, first.Handle, CancellationToken.None);
        var sender = await CreateAsync("orders", [billing]);
        var early = Message("order.created", "o-1");
        await SendUntilAcceptedAsync(sender, [early]);
        await WaitUntilAsync(() => first.Ids.Contains(early.MessageId));

        await subscription.DisposeAsync();
        await before.DisposeAsync();
        var late = Message("order.created", "o-2");
        var sending = SendUntilAcceptedAsync(sender, [late]);
        await Task.Delay(QuietPeriod);
        first.Ids.ShouldNotContain(late.MessageId);

        var second = new Recorder();
        await SubscribeAsync(await CreateAsync("billing", [billing]), billing, second.Handle);
        await sending;
        await WaitUntilAsync(() => second.Ids.Contains(late.MessageId));
    }

    [Fact]
    public async Task DisposedSubscription_StopsDelivery()
    {
        Subscription billing = new("billing", ["order.created"]);
        var first = new Recorder();
        var transport = await CreateAsync("billing", [billing]);
        var subscription = await transport.SubscribeAsync(billing, first.Handle, CancellationToken.None);
        var sender = await CreateAsync("orders", [billing]);
        var early = Message("order.created", "o-1");
        await SendUntilAcceptedAsync(sender, [early]);
        await WaitUntilAsync(() => first.Ids.Contains(early.MessageId));

        await subscription.DisposeAsync();
        var late = Message("order.created", "o-2");
        var sending = SendUntilAcceptedAsync(sender, [late]);
        await Task.Delay(QuietPeriod);

        first.Ids.ShouldNotContain(late.MessageId);
        var second = new Recorder();
        await SubscribeAsync(transport, billing, second.Handle);
        await sending;
        await WaitUntilAsync(() => second.Ids.Contains(late.MessageId));
    }

    /// <summary>A message with a fresh id and a small JSON body.</summary>
    protected static TransportMessage Message(string type, string correlationId) => new(
        MessageId: Guid.CreateVersion7().ToString(),
        Type: type,
        CorrelationId: correlationId,
        Body: Encoding.UTF8.GetBytes($$"""{"orderId":"{{correlationId}}","type":"{{type}}"}"""),
        TraceParent: null,
        Source: "orders",
        CreatedAt: new DateTimeOffset(2026, 12, 6, 12, 0, 0, 123, TimeSpan.Zero));

    /// <summary>Creates a transport that the suite disposes at the end of the test.</summary>
    protected async Task<IMessageTransport> CreateAsync(string service, IReadOnlyList<Subscription> topology)
    {
        var transport = await CreateTransportAsync(service, topology);
        _transports.Add(transport);
        return transport;
    }

    protected async Task SubscribeAsync(IMessageTransport transport, Subscription subscription, MessageHandler handler) =>
        _subscriptions.Add(await transport.SubscribeAsync(subscription, handler, _stop.Token));

    /// <summary>Sends as the outbox relay does: again after every failure, until the transport takes the messages.</summary>
    protected async Task SendUntilAcceptedAsync(IMessageTransport transport, IReadOnlyList<TransportMessage> messages)
    {
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
        timeout.CancelAfter(DeliveryTimeout);
        while (true)
        {
            try
            {
                await transport.SendAsync(messages, timeout.Token);
                return;
            }
            catch (Exception exception) when (exception is not ObjectDisposedException && !timeout.IsCancellationRequested)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(50), timeout.Token);
            }
        }
    }

    protected async Task WaitUntilAsync(Func<bool> condition)
    {
        var deadline = DateTimeOffset.UtcNow + DeliveryTimeout;
        while (!condition())
        {
            if (DateTimeOffset.UtcNow > deadline)
            {
                throw new TimeoutException($"Not delivered within {DeliveryTimeout}.");
            }

            await Task.Delay(TimeSpan.FromMilliseconds(20));
        }
    }

    /// <summary>Records every delivery and answers Handled.</summary>
    protected sealed class Recorder
    {
        public ConcurrentQueue<TransportMessage> Messages { get; } = new();

        public IEnumerable<string> Ids => Messages.Select(message => message.MessageId);

        public Task<DeliveryOutcome> Handle(TransportMessage message, CancellationToken cancellationToken)
        {
            Messages.Enqueue(message);
            return Task.FromResult(DeliveryOutcome.Handled);
        }
    }
}
