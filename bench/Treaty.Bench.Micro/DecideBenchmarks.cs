using BenchmarkDotNet.Attributes;
using Treaty.Core.Engine;
using Treaty.Core.Model;
using Treaty.Core.Protocols;

namespace Treaty.Bench.Micro;

/// <summary>
/// One pure <c>Decide</c> of each protocol machine on a 3-branch transaction: the submit, the
/// decision after a branch call answered, and the terminal decision. Each benchmark decides the
/// same (state, event) again and again; <c>Decide</c> is pure, so every call does the whole work.
/// </summary>
[MemoryDiagnoser]
[SimpleJob(warmupCount: 2, iterationCount: 6)]
[IterationTime(250)]
public class DecideBenchmarks
{
    private Case _sagaSubmit = null!;
    private Case _sagaStepSucceeded = null!;
    private Case _sagaLastStepCommits = null!;
    private Case _sagaStepFailedCompensates = null!;
    private Case _tccSubmit = null!;
    private Case _tccLastTryConfirms = null!;
    private Case _tccLastConfirmCommits = null!;
    private Case _twoPhaseSubmit = null!;
    private Case _twoPhaseLastVoteCommits = null!;
    private Case _twoPhaseLastCommitEnds = null!;
    private Case _threePhaseSubmit = null!;
    private Case _threePhaseLastPreCommitDecides = null!;
    private Case _threePhaseLastDoCommitEnds = null!;
    private Case _messageRegister = null!;
    private Case _messageSenderCommitted = null!;
    private Case _messageLastDeliveryEnds = null!;
    private Case _choreographyEvent = null!;
    private Case _choreographyCompleted = null!;

    [GlobalSetup]
    public void Setup()
    {
        SetupSaga();
        SetupTcc();
        SetupTwoPhase();
        SetupThreePhase();
        SetupMessage();
        SetupChoreography();
    }

    [Benchmark(Description = "saga: submit (first action)")]
    public Decision SagaSubmit() => _sagaSubmit.Decide();

    [Benchmark(Description = "saga: step answered, next action")]
    public Decision SagaStepSucceeded() => _sagaStepSucceeded.Decide();

    [Benchmark(Description = "saga: last step answered, committed")]
    public Decision SagaLastStepCommits() => _sagaLastStepCommits.Decide();

    [Benchmark(Description = "saga: last step failed, compensate")]
    public Decision SagaStepFailedCompensates() => _sagaStepFailedCompensates.Decide();

    [Benchmark(Description = "tcc: submit (3 tries)")]
    public Decision TccSubmit() => _tccSubmit.Decide();

    [Benchmark(Description = "tcc: last try answered, confirm")]
    public Decision TccLastTryConfirms() => _tccLastTryConfirms.Decide();

    [Benchmark(Description = "tcc: last confirm answered, committed")]
    public Decision TccLastConfirmCommits() => _tccLastConfirmCommits.Decide();

    [Benchmark(Description = "2pc: submit (3 prepares)")]
    public Decision TwoPhaseSubmit() => _twoPhaseSubmit.Decide();

    [Benchmark(Description = "2pc: last vote yes, commit decision")]
    public Decision TwoPhaseLastVoteCommits() => _twoPhaseLastVoteCommits.Decide();

    [Benchmark(Description = "2pc: last commit answered, committed")]
    public Decision TwoPhaseLastCommitEnds() => _twoPhaseLastCommitEnds.Decide();

    [Benchmark(Description = "3pc: submit (3 canCommits)")]
    public Decision ThreePhaseSubmit() => _threePhaseSubmit.Decide();

    [Benchmark(Description = "3pc: last preCommit answered, decision")]
    public Decision ThreePhaseLastPreCommitDecides() => _threePhaseLastPreCommitDecides.Decide();

    [Benchmark(Description = "3pc: last doCommit answered, committed")]
    public Decision ThreePhaseLastDoCommitEnds() => _threePhaseLastDoCommitEnds.Decide();

    [Benchmark(Description = "msg: register")]
    public Decision MessageRegister() => _messageRegister.Decide();

    [Benchmark(Description = "msg: sender submits (3 deliveries)")]
    public Decision MessageSenderCommitted() => _messageSenderCommitted.Decide();

    [Benchmark(Description = "msg: last delivery answered, committed")]
    public Decision MessageLastDeliveryEnds() => _messageLastDeliveryEnds.Decide();

    [Benchmark(Description = "choreography: 3rd event reported")]
    public Decision ChoreographyEvent() => _choreographyEvent.Decide();

    [Benchmark(Description = "choreography: completing event")]
    public Decision ChoreographyCompleted() => _choreographyCompleted.Decide();

    private void SetupSaga()
    {
        var machine = new SagaMachine();
        var run = new Driver(machine, Machines.Saga());
        _sagaSubmit = Case.Of(machine, run, new Submitted());
        run.Send(new Submitted());
        run.Send(run.Answer(0, ProtocolNames.Action));
        _sagaStepSucceeded = Case.Of(machine, run, run.Answer(1, ProtocolNames.Action));
        run.Send(run.Answer(1, ProtocolNames.Action));
        _sagaLastStepCommits = Case.Of(machine, run, run.Answer(2, ProtocolNames.Action));
        _sagaStepFailedCompensates = Case.Of(machine, run, run.Answer(2, ProtocolNames.Action, success: false));
    }

    private void SetupTcc()
    {
        var machine = new TccMachine();
        var run = new Driver(machine, Machines.Tcc());
        _tccSubmit = Case.Of(machine, run, new Submitted());
        run.Send(new Submitted());
        run.AnswerAllButLast(ProtocolNames.Try);
        _tccLastTryConfirms = Case.Of(machine, run, run.Answer(2, ProtocolNames.Try));
        run.Send(run.Answer(2, ProtocolNames.Try));
        run.AnswerAllButLast(ProtocolNames.Confirm);
        _tccLastConfirmCommits = Case.Of(machine, run, run.Answer(2, ProtocolNames.Confirm));
    }

    private void SetupTwoPhase()
    {
        var machine = new TwoPhaseCommitMachine();
        var run = new Driver(machine, Machines.TwoPhase());
        _twoPhaseSubmit = Case.Of(machine, run, new Submitted());
        run.Send(new Submitted());
        run.AnswerAllButLast(ProtocolNames.Prepare);
        _twoPhaseLastVoteCommits = Case.Of(machine, run, run.Answer(2, ProtocolNames.Prepare));
        run.Send(run.Answer(2, ProtocolNames.Prepare));
        run.AnswerAllButLast(ProtocolNames.Commit);
        _twoPhaseLastCommitEnds = Case.Of(machine, run, run.Answer(2, ProtocolNames.Commit));
    }

    private void SetupThreePhase()
    {
        var machine = new ThreePhaseCommitMachine();
        var run = new Driver(machine, Machines.ThreePhase());
        _threePhaseSubmit = Case.Of(machine, run, new Submitted());
        run.Send(new Submitted());
        run.AnswerAllButLast(ProtocolNames.CanCommit);
        run.Send(run.Answer(2, ProtocolNames.CanCommit));
        run.AnswerAllButLast(ProtocolNames.PreCommit);
        _threePhaseLastPreCommitDecides = Case.Of(machine, run, run.Answer(2, ProtocolNames.PreCommit));
        run.Send(run.Answer(2, ProtocolNames.PreCommit));
        run.AnswerAllButLast(ProtocolNames.DoCommit);
        _threePhaseLastDoCommitEnds = Case.Of(machine, run, run.Answer(2, ProtocolNames.DoCommit));
    }

    private void SetupMessage()
    {
        var machine = new MessageMachine();
        var run = new Driver(machine, Machines.Message());
        _messageRegister = Case.Of(machine, run, new Submitted());
        run.Send(new Submitted());
        _messageSenderCommitted = Case.Of(machine, run, new SenderCommitted());
        run.Send(new SenderCommitted());
        run.AnswerAllButLast(ProtocolNames.Action);
        _messageLastDeliveryEnds = Case.Of(machine, run, run.Answer(2, ProtocolNames.Action));
    }

    private void SetupChoreography()
    {
        const string Gid = "bench-choreography-1";
        var machine = new ChoreographyMachine();
        var run = new Driver(machine, ChoreographyMachine.SpecFor(Gid));
        run.Send(new Submitted());
        EventReported Event(int n, string type, string service, ChoreographyOutcome? outcome = null) =>
            new(new ChoreographyEvent($"msg-{n:D4}", type, service, Gid, Machines.T0, """{"orderId":"ord-20261206-000042","amount":42.50}""", outcome, null));

        run.Send(Event(1, "order.created", "order"));
        run.Send(Event(2, "payment.reserved", "payment"));
        _choreographyEvent = Case.Of(machine, run, Event(3, "stock.reserved", "inventory"));
        run.Send(Event(3, "stock.reserved", "inventory"));
        _choreographyCompleted = Case.Of(machine, run, Event(4, "order.confirmed", "order", ChoreographyOutcome.Completed));
    }

    /// <summary>One (machine, state, event, context) to decide; checked once to move the state.</summary>
    private sealed class Case(IProtocolMachine machine, TransactionState state, TransactionEvent @event, DecisionContext context)
    {
        public static Case Of(IProtocolMachine machine, Driver run, TransactionEvent @event)
        {
            var @case = new Case(machine, run.State, @event, run.NextContext());
            if (!@case.Decide().Changed(run.State))
            {
                throw new InvalidOperationException($"The benchmark's event {@event} changes nothing.");
            }

            return @case;
        }

        public Decision Decide() => machine.Decide(state, @event, context);
    }
}
