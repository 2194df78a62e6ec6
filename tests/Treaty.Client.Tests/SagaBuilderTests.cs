using System.Text.Json;
using System.Text.Json.Serialization;
using Treaty.Core.Contracts;

namespace Treaty.Client.Tests;

public sealed record Order(string OrderId, decimal Amount);

[JsonSourceGenerationOptions(JsonSerializerDefaults.Web)]
[JsonSerializable(typeof(Order))]
internal sealed partial class OrderJsonContext : JsonSerializerContext;

/// <summary>What <see cref="SagaBuilder.Build"/> sends, without a coordinator.</summary>
public sealed class SagaBuilderTests
{
    private static SagaBuilder Minimal() => new SagaBuilder("g-1").Step("a", "http://p/a");

    [Fact]
    public void Build_Steps_BecomeBranchesInOrderWithActionAndCompensateUrls()
    {
        var request = new SagaBuilder("order-1")
            .Step("reserve", "http://stock/reserve", "http://stock/release")
            .Step("charge", "http://pay/charge", "http://pay/refund")
            .Step("ship", "http://ship/go")
            .Build();

        request.Gid.ShouldBe("order-1");
        request.Protocol.ShouldBe("saga");
        var branches = request.Branches.ShouldNotBeNull();
        branches.Select(b => b!.Name).ShouldBe(["reserve", "charge", "ship"]);
        branches.Select(b => b!.Action).ShouldBe(["http://stock/reserve", "http://pay/charge", "http://ship/go"]);
        branches.Select(b => b!.Compensate).ShouldBe(["http://stock/release", "http://pay/refund", null]);
        branches.ShouldAllBe(b => b!.Try == null && b.Confirm == null && b.Cancel == null && b.Prepare == null);
    }

    [Fact]
    public void Build_WithUriOverload_SendsAbsoluteUris()
    {
        var branch = new SagaBuilder()
            .Step("a", new Uri("http://p:8080/a"), new Uri("http://p:8080/undo-a"))
            .Build().Branches!.Single()!;

        branch.Action.ShouldBe("http://p:8080/a");
        branch.Compensate.ShouldBe("http://p:8080/undo-a");
    }

    [Fact]
    public void Build_WithoutGid_LeavesGidToTheCoordinator()
    {
        var builder = new SagaBuilder().Step("a", "http://p/a");

        builder.Gid.ShouldBeNull();
        builder.Build().Gid.ShouldBeNull();
    }

    [Fact]
    public void Build_DependsOn_AbsentIsNullEmptyIsEmptyNamedIsKept()
    {
        var branches = new SagaBuilder("g")
            .Step("first", "http://p/first")
            .Step("sequential", "http://p/seq")
            .Step("parallel", "http://p/par", dependsOn: [])
            .Step("join", "http://p/join", dependsOn: ["sequential", "parallel"])
            .Build().Branches!;

        // Absent means "the previous step" to the coordinator; it must not be sent as [].
        branches[0]!.DependsOn.ShouldBeNull();
        branches[1]!.DependsOn.ShouldBeNull();
        branches[2]!.DependsOn.ShouldNotBeNull().ShouldBeEmpty();
        branches[3]!.DependsOn.ShouldBe(["sequential", "parallel"]);
    }

    [Fact]
    public void Build_DependsOnAbsentAndEmpty_SerializeDifferently()
    {
        var request = new SagaBuilder("g")
            .Step("a", "http://p/a")
            .Step("b", "http://p/b", dependsOn: [])
            .Build();

        var json = JsonSerializer.SerializeToElement(request, Treaty.Core.Serialization.TreatyJsonContext.Default.SubmitTransactionRequest);
        var branches = json.GetProperty("branches");
        branches[0].TryGetProperty("dependsOn", out var absent).ShouldBeFalse(absent.ToString());
        branches[1].GetProperty("dependsOn").GetArrayLength().ShouldBe(0);
    }

    [Fact]
    public void Build_Pivot_IsTrueOnThePivotStepAndAbsentElsewhere()
    {
        var branches = new SagaBuilder("g")
            .Step("a", "http://p/a", "http://p/undo-a")
            .Step("b", "http://p/b", pivot: true)
            .Step("c", "http://p/c")
            .Build().Branches!;

        branches.Select(b => b!.Pivot).ShouldBe([null, true, null]);
    }

    [Fact]
    public void Build_TimeoutsAndRetry_AreConvertedToMilliseconds()
    {
        var request = new SagaBuilder("g")
            .Step("a", "http://p/a", timeout: TimeSpan.FromSeconds(2.5),
                retry: new RetrySettings(7, TimeSpan.FromMilliseconds(150), TimeSpan.FromMinutes(1)))
            .Step("b", "http://p/b")
            .WithTimeout(TimeSpan.FromMinutes(2))
            .WithRetry(4, TimeSpan.FromMilliseconds(200), TimeSpan.FromSeconds(10))
            .Build();

        request.TimeoutMs.ShouldBe(120_000);
        var retry = request.Retry.ShouldNotBeNull();
        (retry.MaxAttempts, retry.InitialDelayMs, retry.MaxDelayMs).ShouldBe((4, 200L, 10_000L));

        var a = request.Branches![0]!;
        a.TimeoutMs.ShouldBe(2_500);
        var stepRetry = a.Retry.ShouldNotBeNull();
        (stepRetry.MaxAttempts, stepRetry.InitialDelayMs, stepRetry.MaxDelayMs).ShouldBe((7, 150L, 60_000L));

        var b = request.Branches[1]!;
        b.TimeoutMs.ShouldBeNull();
        b.Retry.ShouldBeNull();
    }

    [Fact]
    public void Build_SubMillisecondTimeout_RoundsUpToOneMillisecond()
    {
        var branch = new SagaBuilder("g")
            .Step("a", "http://p/a", timeout: TimeSpan.FromTicks(10))
            .Build().Branches!.Single()!;

        branch.TimeoutMs.ShouldBe(1);
    }

    [Fact]
    public void Build_WithoutTimeoutRetryOrPayload_SendsNone()
    {
        var request = Minimal().Build();

        request.TimeoutMs.ShouldBeNull();
        request.Retry.ShouldBeNull();
        request.Payload.ShouldBeNull();
    }

    [Fact]
    public void Build_PayloadFromJsonElement_IsSentAsIs()
    {
        using var document = JsonDocument.Parse("""{"orderId":"o-7","lines":[1,2,3]}""");
        var request = Minimal().WithPayload(document.RootElement).Build();

        var payload = request.Payload.ShouldNotBeNull();
        payload.GetProperty("orderId").GetString().ShouldBe("o-7");
        payload.GetProperty("lines").GetArrayLength().ShouldBe(3);
    }

    [Fact]
    public void Build_PayloadFromJsonElement_OutlivesItsDocument()
    {
        var builder = Minimal();
        using (var document = JsonDocument.Parse("""{"orderId":"o-8"}"""))
        {
            builder.WithPayload(document.RootElement);
        }

        builder.Build().Payload.ShouldNotBeNull().GetProperty("orderId").GetString().ShouldBe("o-8");
    }

    [Fact]
    public void Build_PayloadFromTypedObject_IsSerializedWithTheTypeInfo()
    {
        var request = Minimal().WithPayload(new Order("o-9", 25.5m), OrderJsonContext.Default.Order).Build();

        var payload = request.Payload.ShouldNotBeNull();
        payload.GetProperty("orderId").GetString().ShouldBe("o-9");
        payload.GetProperty("amount").GetDecimal().ShouldBe(25.5m);
    }

    [Fact]
    public void Build_CalledTwice_ReturnsIndependentRequests()
    {
        var builder = new SagaBuilder("g")
            .Step("a", "http://p/a", dependsOn: [], retry: new RetrySettings(2, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(2)));
        var first = builder.Build();
        first.Branches![0]!.Name = "changed";
        first.Branches[0]!.DependsOn!.Add("x");
        first.Branches[0]!.Retry!.MaxAttempts = 99;

        var second = builder.Build();

        second.ShouldNotBeSameAs(first);
        second.Branches![0]!.Name.ShouldBe("a");
        second.Branches[0]!.DependsOn.ShouldNotBeNull().ShouldBeEmpty();
        second.Branches[0]!.Retry!.MaxAttempts.ShouldBe(2);
    }

    [Fact]
    public void Build_DependsOnSequence_IsCopiedWhenTheStepIsAdded()
    {
        var deps = new List<string> { "a" };
        var builder = new SagaBuilder("g").Step("a", "http://p/a").Step("b", "http://p/b", dependsOn: deps);
        deps.Add("later");

        builder.Build().Branches![1]!.DependsOn.ShouldBe(["a"]);
    }

    [Fact]
    public void Build_WithoutSteps_Throws()
    {
        Should.Throw<InvalidOperationException>(() => new SagaBuilder("g").Build());
    }

    [Fact]
    public void SubmitAsync_OnBuilderWithoutClient_Throws()
    {
        Should.Throw<InvalidOperationException>(() => Minimal().SubmitAsync());
    }

    [Theory]
    [InlineData("")]
    [InlineData("  ")]
    public void Step_BlankName_ThrowsNamingName(string name)
    {
        Should.Throw<ArgumentException>(() => new SagaBuilder("g").Step(name, "http://p/a")).ParamName.ShouldBe("name");
    }

    [Fact]
    public void Step_NullName_ThrowsNamingName()
    {
        Should.Throw<ArgumentException>(() => new SagaBuilder("g").Step(null!, "http://p/a")).ParamName.ShouldBe("name");
    }

    [Theory]
    [InlineData("")]
    [InlineData(" ")]
    public void Step_BlankAction_ThrowsNamingAction(string action)
    {
        Should.Throw<ArgumentException>(() => new SagaBuilder("g").Step("a", action)).ParamName.ShouldBe("action");
    }

    [Fact]
    public void Step_NullUriAction_ThrowsNamingAction()
    {
        Should.Throw<ArgumentException>(() => new SagaBuilder("g").Step("a", (Uri)null!)).ParamName.ShouldBe("action");
    }

    [Fact]
    public void Step_DuplicateName_ThrowsNamingName()
    {
        var builder = new SagaBuilder("g").Step("a", "http://p/a");

        var ex = Should.Throw<ArgumentException>(() => builder.Step("a", "http://p/other"));

        ex.ParamName.ShouldBe("name");
        ex.Message.ShouldContain("'a'");
        builder.Build().Branches!.Count.ShouldBe(1);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    public void Step_NonPositiveTimeout_ThrowsNamingTimeout(int ms)
    {
        Should.Throw<ArgumentException>(() => new SagaBuilder("g").Step("a", "http://p/a", timeout: TimeSpan.FromMilliseconds(ms)))
            .ParamName.ShouldBe("timeout");
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-5)]
    public void WithTimeout_NonPositive_ThrowsNamingTimeout(int ms)
    {
        Should.Throw<ArgumentException>(() => Minimal().WithTimeout(TimeSpan.FromMilliseconds(ms))).ParamName.ShouldBe("timeout");
    }

    [Fact]
    public void WithRetry_ZeroAttempts_ThrowsNamingMaxAttempts()
    {
        Should.Throw<ArgumentException>(() => Minimal().WithRetry(0, TimeSpan.Zero, TimeSpan.FromSeconds(1)))
            .ParamName.ShouldBe("maxAttempts");
    }

    [Fact]
    public void WithRetry_NegativeInitialDelay_ThrowsNamingInitialDelay()
    {
        Should.Throw<ArgumentException>(() => Minimal().WithRetry(3, TimeSpan.FromMilliseconds(-1), TimeSpan.FromSeconds(1)))
            .ParamName.ShouldBe("initialDelay");
    }

    [Fact]
    public void WithRetry_MaxDelayBelowInitialDelay_ThrowsNamingMaxDelay()
    {
        Should.Throw<ArgumentException>(() => Minimal().WithRetry(3, TimeSpan.FromSeconds(2), TimeSpan.FromSeconds(1)))
            .ParamName.ShouldBe("maxDelay");
    }

    [Fact]
    public void WithPayload_NullTypeInfo_ThrowsNamingTypeInfo()
    {
        Should.Throw<ArgumentException>(() => Minimal().WithPayload(new Order("o", 1m), null!)).ParamName.ShouldBe("typeInfo");
    }
}
