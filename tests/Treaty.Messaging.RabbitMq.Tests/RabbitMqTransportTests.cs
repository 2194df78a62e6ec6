using System.Text;
using RabbitMQ.Client;
using RabbitMQ.Client.Exceptions;
using Treaty.Messaging.Transport;

namespace Treaty.Messaging.RabbitMq.Tests;

[Collection(SharedBrokerCollection.Name)]
public sealed class RabbitMqTransportTests(RabbitMqBroker broker)
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(20);

    [Fact]
    public async Task Send_DeliversEachMessageToEverySubscriberOfItsType_AndOnlyThose()
    {
        var exchange = Messages.Exchange();
        await using var transport = RabbitMqTransport.Create(Messages.Options(broker, exchange));
        var payment = new Recorder();
        var audit = new Recorder();
        var inventory = new Recorder();
        await using var s1 = await transport.SubscribeAsync(new Subscription("payment", ["order.created"]), payment.Handle, default);
        await using var s2 = await transport.SubscribeAsync(new Subscription("audit", ["order.created", "payment.reserved"]), audit.Handle, default);
        await using var s3 = await transport.SubscribeAsync(new Subscription("inventory", ["payment.reserved"]), inventory.Handle, default);

        var created = Enumerable.Range(0, 10).Select(i => Messages.New("order.created", body: $"{{\"n\":{i}}}")).ToList();
        var reserved = Enumerable.Range(0, 5).Select(_ => Messages.New("payment.reserved")).ToList();
        var unsubscribed = Messages.New("order.confirmed");
        await transport.SendAsync([.. created, .. reserved, unsubscribed], default);

        await audit.WaitUntil(() => audit.Count >= 15, Wait, "audit got both types");
        await payment.WaitUntil(() => payment.Count >= 10, Wait, "payment got order.created");
        await inventory.WaitUntil(() => inventory.Count >= 5, Wait, "inventory got payment.reserved");
        // Anything misrouted would have arrived with the rest; give stragglers a moment anyway.
        await Task.Delay(300);

        payment.DistinctIds.ShouldBe(created.Select(m => m.MessageId), ignoreOrder: true);
        inventory.DistinctIds.ShouldBe(reserved.Select(m => m.MessageId), ignoreOrder: true);
        audit.DistinctIds.ShouldBe(created.Concat(reserved).Select(m => m.MessageId), ignoreOrder: true);
        (payment.Count + audit.Count + inventory.Count).ShouldBe(30, "each subscriber once per message of its types, order.confirmed to nobody");

        // Every field travels: the ids, type, correlation, trace context, source, creation time (to the tick) and body.
        var sent = created[3];
        var got = payment.Deliveries.Single(d => d.Message.MessageId == sent.MessageId).Message;
        got.Type.ShouldBe(sent.Type);
        got.CorrelationId.ShouldBe(sent.CorrelationId);
        got.TraceParent.ShouldBe(sent.TraceParent);
        got.Source.ShouldBe(sent.Source);
        got.CreatedAt.ShouldBe(sent.CreatedAt);
        Encoding.UTF8.GetString(got.Body.Span).ShouldBe("{\"n\":3}");
    }

    [Fact]
    public async Task Send_PutsTheMessagesInAmqpPropertiesAndHeaders_Persistent()
    {
        var exchange = Messages.Exchange();
        await using var transport = RabbitMqTransport.Create(Messages.Options(broker, exchange));
        await transport.DeclareSubscriptionAsync(new Subscription("payment", ["order.created"]), default);
        var message = Messages.New("order.created", correlationId: "order-42");
        await transport.SendAsync([message], default);

        await using var raw = await RawChannel.OpenAsync(broker);
        var got = await raw.Channel.BasicGetAsync(RabbitMqTopology.MainQueue(exchange, "payment"), autoAck: true);
        got.ShouldNotBeNull();
        var p = got.BasicProperties;
        p.Persistent.ShouldBeTrue();
        p.MessageId.ShouldBe(message.MessageId);
        p.CorrelationId.ShouldBe("order-42");
        p.Type.ShouldBe("order.created");
        p.AppId.ShouldBe("order");
        got.RoutingKey.ShouldBe("order.created");
        Encoding.UTF8.GetString((byte[])p.Headers!["traceparent"]!).ShouldBe(message.TraceParent);
        Encoding.UTF8.GetString((byte[])p.Headers!["treaty-message-id"]!).ShouldBe(message.MessageId);
        Encoding.UTF8.GetString((byte[])p.Headers!["treaty-correlation-id"]!).ShouldBe("order-42");
    }

    [Fact]
    public async Task Send_ReturnsOnlyOnceTheBrokerConfirmed_AndThrowsWhenItRefuses()
    {
        var exchange = Messages.Exchange();
        await using var transport = RabbitMqTransport.Create(Messages.Options(broker, exchange));
        await transport.DeclareSubscriptionAsync(new Subscription("payment", ["order.created"]), default);

        // A queue that holds one message and makes the broker nack (reject-publish) any more.
        await using var raw = await RawChannel.OpenAsync(broker);
        var full = exchange + ".full";
        await raw.Channel.QueueDeclareAsync(full, durable: true, exclusive: false, autoDelete: false,
            arguments: new Dictionary<string, object?> { ["x-max-length"] = 1, ["x-overflow"] = "reject-publish" });
        await raw.Channel.QueueBindAsync(full, exchange, "order.created");

        var three = Enumerable.Range(0, 3).Select(_ => Messages.New("order.created")).ToList();
        await transport.SendAsync([three[0]], default);
        // Confirmed means held: the message is in the queue the moment SendAsync returns, no waiting.
        (await raw.Channel.MessageCountAsync(RabbitMqTopology.MainQueue(exchange, "payment"))).ShouldBe(1u);

        // The second cannot enter the full queue: the broker nacks, and SendAsync throws instead of returning.
        var refused = await Should.ThrowAsync<PublishException>(() => transport.SendAsync([three[1]], default));
        refused.IsReturn.ShouldBeFalse();

        // Once there is room again, sending the same message again succeeds (what the outbox relay does).
        await raw.Channel.QueuePurgeAsync(full);
        await transport.SendAsync([three[1]], default);
        (await raw.Channel.MessageCountAsync(full)).ShouldBe(1u);
    }

    [Fact]
    public async Task Retry_IsRedeliveredAfterTheRetryDelay_NotInATightLoop()
    {
        var exchange = Messages.Exchange();
        await using var transport = RabbitMqTransport.Create(Messages.Options(broker, exchange)); // retry delay 1 s
        var recorder = new Recorder((_, attempt) => attempt < 3 ? DeliveryOutcome.Retry : DeliveryOutcome.Handled);
        await using var subscription = await transport.SubscribeAsync(new Subscription("payment", ["order.created"]), recorder.Handle, default);
        var message = Messages.New("order.created");
        await transport.SendAsync([message], default);

        await recorder.WaitUntil(() => recorder.Count >= 3, Wait, "three deliveries");
        await Task.Delay(1500); // a fourth would come one retry delay later
        var times = recorder.Deliveries.Select(d => d.At).ToList();
        times.Count.ShouldBe(3, "retried twice, then handled and acknowledged");
        (times[1] - times[0]).ShouldBeGreaterThan(TimeSpan.FromMilliseconds(900));
        (times[2] - times[1]).ShouldBeGreaterThan(TimeSpan.FromMilliseconds(900));
        recorder.Deliveries.ShouldAllBe(d => d.Message.MessageId == message.MessageId);

        await using var raw = await RawChannel.OpenAsync(broker);
        var main = RabbitMqTopology.MainQueue(exchange, "payment");
        (await raw.Channel.MessageCountAsync(main)).ShouldBe(0u);
        (await raw.Channel.MessageCountAsync(RabbitMqTopology.RetryQueue(main))).ShouldBe(0u);
    }

    [Fact]
    public async Task HandlerException_IsRetriedLikeRetry()
    {
        var exchange = Messages.Exchange();
        await using var transport = RabbitMqTransport.Create(Messages.Options(broker, exchange));
        var recorder = new Recorder((_, attempt) => attempt == 1 ? throw new InvalidOperationException("database down") : DeliveryOutcome.Handled);
        await using var subscription = await transport.SubscribeAsync(new Subscription("payment", ["order.created"]), recorder.Handle, default);
        await transport.SendAsync([Messages.New("order.created")], default);

        await recorder.WaitUntil(() => recorder.Count >= 2, Wait, "redelivery after the exception");
        var times = recorder.Deliveries.Select(d => d.At).ToList();
        (times[1] - times[0]).ShouldBeGreaterThan(TimeSpan.FromMilliseconds(900));
    }

    [Fact]
    public async Task Unacknowledged_WhenTheConsumerStopsBeforeItsAck_IsDeliveredAgain()
    {
        var exchange = Messages.Exchange();
        await using var transport = RabbitMqTransport.Create(Messages.Options(broker, exchange));
        var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var subscription = await transport.SubscribeAsync(new Subscription("payment", ["order.created"]), async (message, ct) =>
        {
            entered.TrySetResult();
            await Task.Delay(Timeout.Infinite, ct); // "crashes" before it answers
            return DeliveryOutcome.Handled;
        }, default);
        var message = Messages.New("order.created");
        await transport.SendAsync([message], default);
        await entered.Task.WaitAsync(Wait);
        await subscription.DisposeAsync();

        var recorder = new Recorder();
        await using var again = await transport.SubscribeAsync(new Subscription("payment", ["order.created"]), recorder.Handle, default);
        await recorder.WaitUntil(() => recorder.Count >= 1, Wait, "the redelivery");
        recorder.Deliveries.Single().Message.MessageId.ShouldBe(message.MessageId);
    }

    [Fact]
    public async Task Unacknowledged_WhenTheConnectionCloses_IsDeliveredToTheNextConsumer()
    {
        var exchange = Messages.Exchange();
        var options = Messages.Options(broker, exchange);
        var first = RabbitMqTransport.Create(options);
        var entered = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await first.SubscribeAsync(new Subscription("payment", ["order.created"]), async (_, ct) =>
        {
            entered.TrySetResult();
            await Task.Delay(Timeout.Infinite, ct);
            return DeliveryOutcome.Handled;
        }, default);
        var message = Messages.New("order.created");
        await first.SendAsync([message], default);
        await entered.Task.WaitAsync(Wait);
        await first.DisposeAsync(); // the whole connection goes, with the delivery unacknowledged

        await using var second = RabbitMqTransport.Create(options);
        var recorder = new Recorder();
        await using var subscription = await second.SubscribeAsync(new Subscription("payment", ["order.created"]), recorder.Handle, default);
        await recorder.WaitUntil(() => recorder.Count >= 1, Wait, "the redelivery");
        recorder.Deliveries.Single().Message.MessageId.ShouldBe(message.MessageId);
    }

    [Fact]
    public async Task Poison_AfterMaxAttempts_GoesToTheDeadLetterQueue_WhileOthersKeepFlowing()
    {
        var exchange = Messages.Exchange();
        var options = Messages.Options(broker, exchange);
        options.MaxDeliveryAttempts = 3;
        options.RetryDelay = TimeSpan.FromMilliseconds(300);
        await using var transport = RabbitMqTransport.Create(options);
        var poison = Messages.New("order.created", body: "poison");
        var recorder = new Recorder((m, _) => m.MessageId == poison.MessageId ? throw new FormatException("cannot parse") : DeliveryOutcome.Handled);
        await using var subscription = await transport.SubscribeAsync(new Subscription("payment", ["order.created"]), recorder.Handle, default);
        var good = Enumerable.Range(0, 5).Select(_ => Messages.New("order.created")).ToList();
        await transport.SendAsync([poison, .. good], default);

        await using var raw = await RawChannel.OpenAsync(broker);
        var main = RabbitMqTopology.MainQueue(exchange, "payment");
        var deadLetters = RabbitMqTopology.DeadLetterQueue(main);
        await recorder.WaitUntil(() => recorder.Deliveries.Count(d => d.Message.MessageId == poison.MessageId) >= 3, Wait, "three attempts");
        BasicGetResult? dead = null;
        await recorder.WaitUntil(() => (dead ??= raw.Channel.BasicGetAsync(deadLetters, autoAck: true).GetAwaiter().GetResult()) is not null, Wait, "the dead letter");

        dead!.BasicProperties.MessageId.ShouldBe(poison.MessageId);
        Encoding.UTF8.GetString(dead.Body.Span).ShouldBe("poison");
        Encoding.UTF8.GetString((byte[])dead.BasicProperties.Headers!["treaty-dead-letter-reason"]!).ShouldContain("3 attempts");
        recorder.Deliveries.Count(d => d.Message.MessageId == poison.MessageId).ShouldBe(3);
        recorder.DistinctIds.ShouldBe(good.Select(m => m.MessageId).Append(poison.MessageId), ignoreOrder: true);
        (await raw.Channel.MessageCountAsync(main)).ShouldBe(0u);
        (await raw.Channel.MessageCountAsync(RabbitMqTopology.RetryQueue(main))).ShouldBe(0u);
    }

    [Fact]
    public async Task Malformed_WithoutMessageId_GoesToTheDeadLetterQueue_WithoutReachingTheHandler()
    {
        var exchange = Messages.Exchange();
        await using var transport = RabbitMqTransport.Create(Messages.Options(broker, exchange));
        var recorder = new Recorder();
        await using var subscription = await transport.SubscribeAsync(new Subscription("payment", ["order.created"]), recorder.Handle, default);

        await using var raw = await RawChannel.OpenAsync(broker);
        await raw.Channel.BasicPublishAsync(exchange, "order.created", Encoding.UTF8.GetBytes("not ours"));
        var deadLetters = RabbitMqTopology.DeadLetterQueue(RabbitMqTopology.MainQueue(exchange, "payment"));
        BasicGetResult? dead = null;
        await recorder.WaitUntil(() => (dead ??= raw.Channel.BasicGetAsync(deadLetters, autoAck: true).GetAwaiter().GetResult()) is not null, Wait, "the dead letter");
        Encoding.UTF8.GetString(dead!.Body.Span).ShouldBe("not ours");
        recorder.Count.ShouldBe(0);
    }

    [Fact]
    public async Task DeadLettered_And_Handled_AreAcknowledged_NotRedelivered()
    {
        var exchange = Messages.Exchange();
        await using var transport = RabbitMqTransport.Create(Messages.Options(broker, exchange));
        var recorder = new Recorder((m, _) => m.CorrelationId == "dead" ? DeliveryOutcome.DeadLettered : DeliveryOutcome.Handled);
        await using var subscription = await transport.SubscribeAsync(new Subscription("payment", ["order.created"]), recorder.Handle, default);
        await transport.SendAsync([Messages.New("order.created", correlationId: "dead"), Messages.New("order.created")], default);
        await recorder.WaitUntil(() => recorder.Count >= 2, Wait, "both");
        await Task.Delay(1500); // longer than the retry delay
        recorder.Count.ShouldBe(2);
        await using var raw = await RawChannel.OpenAsync(broker);
        var main = RabbitMqTopology.MainQueue(exchange, "payment");
        (await raw.Channel.MessageCountAsync(RabbitMqTopology.DeadLetterQueue(main))).ShouldBe(0u, "the kit keeps its own dead letters; the transport only acknowledges");
    }

    [Fact]
    public async Task Prefetch_LimitsTheUnacknowledgedDeliveriesOfOneSubscriber()
    {
        var exchange = Messages.Exchange();
        var options = Messages.Options(broker, exchange);
        options.PrefetchCount = 3;
        await using var transport = RabbitMqTransport.Create(options);
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var recorder = new Recorder();
        await using var subscription = await transport.SubscribeAsync(new Subscription("payment", ["order.created"]), async (m, ct) =>
        {
            await release.Task.WaitAsync(ct); // holds every delivery unacknowledged
            return await recorder.Handle(m, ct);
        }, default);
        await transport.SendAsync(Enumerable.Range(0, 10).Select(_ => Messages.New("order.created")).ToList(), default);

        await using var raw = await RawChannel.OpenAsync(broker);
        var main = RabbitMqTopology.MainQueue(exchange, "payment");
        // The broker hands the consumer 3 and keeps 7 ready while none is acknowledged.
        await recorder.WaitUntil(() => raw.Channel.MessageCountAsync(main).GetAwaiter().GetResult() == 7u, Wait, "7 ready");
        await Task.Delay(300);
        (await raw.Channel.MessageCountAsync(main)).ShouldBe(7u);

        release.SetResult();
        await recorder.WaitUntil(() => recorder.Count >= 10, Wait, "all 10 once released");
    }
}
