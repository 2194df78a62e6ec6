using System.Collections.Immutable;
using System.Text;
using System.Text.Json;
using Treaty.Core.Model;
using Treaty.Core.Protocols;
using Treaty.Core.Serialization;
using static Treaty.Core.Tests.Support.SagaSpecs;

namespace Treaty.Core.Tests.Serialization;

/// <summary>What the stores write: the spec once, then a compact progress per decision.</summary>
public sealed class StoredStateCodecTests
{
    private static readonly DateTimeOffset T1 = T0.AddTicks(1_234_567);

    [Fact]
    public void Progress_WithEveryFieldSet_ReadsBackTheSameState()
    {
        var state = Everything();

        var back = StoredStateCodec.Read(StoredStateCodec.Spec(state.Spec), StoredStateCodec.Progress(state));

        Wire(back).ShouldBe(Wire(state));
    }

    [Fact]
    public void Progress_WithEveryFieldAtItsDefault_ReadsBackTheSameState()
    {
        // Left out when default, read back as the default: this fails if a type of the state ever
        // gets an initializer that differs from its type's default.
        var state = Everything() with
        {
            Status = default,
            Reason = null,
            Deadline = null,
            NextWakeAt = null,
            Phase = "",
            Outcome = null,
            StuckOn = null,
            ForcedWrites = 0,
            Choreography = null,
            Ops = [],
            Branches = [new BranchState("b0", [OpState.New("action"), OpState.New("compensate")])],
        };

        var back = StoredStateCodec.Read(StoredStateCodec.Spec(state.Spec), StoredStateCodec.Progress(state));

        Wire(back).ShouldBe(Wire(state));
        back.Status.ShouldBe(default);
        back.Outcome.ShouldBeNull();
        back.Branches[0].Ops[1].Status.ShouldBe(OpStatus.NotStarted);
    }

    [Fact]
    public void Progress_IsCompact_NoSpecNoDefaultsTimesAsTicks()
    {
        var state = Committed3StepSaga();

        var progress = Encoding.UTF8.GetString(StoredStateCodec.Progress(state));
        var before = Encoding.UTF8.GetString(PreviousProgress(state));

        progress.ShouldNotContain("\"spec\"");
        progress.ShouldNotContain("budgetBase");
        progress.ShouldNotContain("NotStarted");
        progress.ShouldNotContain("+00:00");
        progress.ShouldContain($"\"createdAt\":{state.CreatedAt.UtcTicks}");
        progress.Length.ShouldBeLessThan(before.Length * 3 / 4, $"{progress.Length} bytes against {before.Length} before: {progress}");
    }

    [Fact]
    public void Read_TheFormsWrittenBefore_StubSpecWithIsoTimes_AndTheWholeState()
    {
        var state = Everything();
        var spec = StoredStateCodec.Spec(state.Spec);

        var fromStub = StoredStateCodec.Read(spec, PreviousProgress(state));
        var fromWhole = StoredStateCodec.Read([], JsonSerializer.SerializeToUtf8Bytes(state, TreatyJsonContext.Default.TransactionState));

        Wire(fromStub).ShouldBe(Wire(state));
        Wire(fromWhole).ShouldBe(Wire(state));
    }

    [Fact]
    public void Progress_TimesWithAnOffset_KeepIt()
    {
        var plus2 = TimeSpan.FromHours(2);
        var state = Everything() with { CreatedAt = T0.ToOffset(plus2), Deadline = T1.ToOffset(plus2) };

        var back = StoredStateCodec.Read(StoredStateCodec.Spec(state.Spec), StoredStateCodec.Progress(state));

        back.CreatedAt.Offset.ShouldBe(plus2);
        back.Deadline!.Value.Offset.ShouldBe(plus2);
        Wire(back).ShouldBe(Wire(state));
    }

    [Fact]
    public void Read_ACompactProgressWithoutItsSpec_IsRefused() =>
        Should.Throw<JsonException>(() => StoredStateCodec.Read([], StoredStateCodec.Progress(Everything())));

    private static string Wire(TransactionState state) => JsonSerializer.Serialize(state, TreatyJsonContext.Default.TransactionState);

    // How Progress wrote a state until 2026-12-07: the wire context, with the spec cut to a stub.
    private static byte[] PreviousProgress(TransactionState state) =>
        JsonSerializer.SerializeToUtf8Bytes(
            state with { Spec = new TransactionSpec(state.Spec.Gid, state.Spec.Protocol, "null", [], null, null) },
            TreatyJsonContext.Default.TransactionState);

    private static TransactionState Committed3StepSaga()
    {
        var state = new SagaMachine().Create(Sequential("b0", "b1", "b2"), "fp-" + new string('0', 61), T0);
        var done = new OpState("action", OpStatus.Succeeded, 1, 0, null, 200, null, T0, T0, T1, "{}");
        return state with
        {
            Status = TransactionStatus.Committed,
            Outcome = TransactionOutcome.Commit,
            UpdatedAt = T1,
            NextWakeAt = null,
            Version = 4,
            ForcedWrites = 3,
            Branches = [.. state.Branches.Select(b => b.With(done))],
        };
    }

    private static TransactionState Everything()
    {
        var state = new SagaMachine().Create(Sequential("b0", "b1") with { PayloadJson = """{"amount":25}""" }, "fp", T0);
        var op = new OpState("action", OpStatus.Waiting, 3, 1, T1.AddSeconds(5), 503, "busy", T0, T1, T1.AddSeconds(1), """{"ok":true}""");
        return state with
        {
            Status = TransactionStatus.Aborting,
            Reason = "b1 refused",
            UpdatedAt = T1,
            Deadline = T1.AddMinutes(1),
            NextWakeAt = T1.AddSeconds(5),
            Version = 7,
            Phase = "compensate",
            Outcome = TransactionOutcome.Abort,
            StuckOn = new StuckCause("b0", "compensate", 4, 503, "still busy"),
            ForcedWrites = 5,
            Choreography = new ChoreographyState(["m1", "m2"], T1, 30_000, "order-placed", "orders"),
            Ops = [op with { Op = "queryPrepared" }],
            Branches = [.. state.Branches.Select(b => b.With(op))],
        };
    }
}
